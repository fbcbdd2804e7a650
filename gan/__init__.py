"""StyleGAN2 in TensorFlow 2: networks, checkpoints, NVIDIA TF1 import, fine-tuning."""
