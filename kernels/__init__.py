"""Kernel sources, shipped as `tf4ctr_fast.kernels` (setup.py maps this folder there).

One fused op per file: `<op>.cpp` is the C++ CPU kernel (built into tf4ctr_fast/_C.so by
CMakeLists.txt), `<op>_triton.py` its Triton twin for CUDA. The public entry points and their
autograd live in `tf4ctr_fast.ops`.
"""
