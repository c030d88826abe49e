"""Models: the classifiers and the tap on the target layer (classifiers), and the stand-alone loader an export ships (mlp_loader)."""
