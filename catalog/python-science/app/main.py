"""A tiny computation: the Gaussian integral by quadrature, checked against sqrt(pi)."""

import numpy as np
from scipy import integrate

value, error = integrate.quad(lambda x: np.exp(-x * x), -np.inf, np.inf)
print(f"integral of exp(-x^2) over the real line = {value:.10f}")
print(f"sqrt(pi)                                  = {np.sqrt(np.pi):.10f}")
print(f"eigenvalues of [[2,1],[1,2]]              = {np.linalg.eigvalsh([[2.0, 1.0], [1.0, 2.0]])}")
