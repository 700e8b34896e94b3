"""The embedded simulator backend: kinematic ego, IDM/MOBIL traffic, on the compiled roads."""
