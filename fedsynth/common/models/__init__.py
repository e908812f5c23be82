"""Networks: the pix2pix generator and discriminator, chosen from a small registry."""
