"""Quantization: BN folding and the fx graph passes, calibration, the integer graph builder."""
