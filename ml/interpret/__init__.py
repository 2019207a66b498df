"""Error interpretation: confused pairs, Grad-CAM, guided backpropagation, background occlusion."""
