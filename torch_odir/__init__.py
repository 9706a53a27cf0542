"""torch-odir: the PyTorch + torchvision reference implementation of the dual-eye classifier (ResNet50 by default)."""
