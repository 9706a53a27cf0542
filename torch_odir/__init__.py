"""torch-odir: the PyTorch + torchvision reference implementation of the dual-eye ResNet50."""
