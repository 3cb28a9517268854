"""npm packages: node_modules/**/package.json."""

from __future__ import annotations

import json

from packageurl import PackageURL

from sbom.catalogers.package import Package, layer_of, spdx_expression


def wanted(path: str) -> bool:
    return path.endswith("/package.json") and "node_modules/" in path


def catalog(scan, distro: dict[str, str]) -> list[Package]:
    records = scan.by_path()
    out = []
    for path in sorted(p for p in scan.contents if wanted(p)):
        # Only a package's own manifest: node_modules/NAME/package.json or node_modules/@scope/NAME/package.json
        parts = path.split("/")
        i = len(parts) - 2
        if parts[i - 1] != "node_modules" and not (
            i >= 2 and parts[i - 1].startswith("@") and parts[i - 2] == "node_modules"
        ):
            continue
        try:
            manifest = json.loads(scan.contents[path])
        except ValueError:
            continue
        if not isinstance(manifest, dict) or not manifest.get("name"):
            continue
        name, version = str(manifest["name"]), str(manifest.get("version", ""))
        namespace, _, short = name.rpartition("/")
        purl = PackageURL("npm", namespace or None, short, version).to_string()
        package = Package("npm", name, version, purl, database=path)
        license_field = manifest.get("license")
        if isinstance(license_field, dict):
            license_field = license_field.get("type")
        package.licenses, package.license_text = spdx_expression(
            [license_field] if isinstance(license_field, str) else []
        )
        package.layer = layer_of(records, path)
        out.append(package)
    return out
