"""visq.eval: image-quality metrics (FID, CLIP score, fidelity to float, top-1), the batch runner and reports.

Lives at the repository root, next to ``pipelines/``; it imports ``visq`` but ``visq`` never imports it.
Submodules are imported explicitly (``from eval import fid``) so that ``import eval`` stays cheap.
"""
