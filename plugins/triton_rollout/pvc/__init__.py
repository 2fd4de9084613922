"""The PVC: its layout and atomic filesystem primitives, the per-model lock, and the records kept under state/."""
