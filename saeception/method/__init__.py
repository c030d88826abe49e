"""The method: the SAE, sharpening, training, the stages' declarations and the cycle chain."""
