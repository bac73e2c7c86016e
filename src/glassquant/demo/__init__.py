"""The guided tour: the seed post computed, then a digits MLP proven equal to PyTorch's int8."""
