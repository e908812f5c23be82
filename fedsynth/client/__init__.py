"""A hospital site: the Flower ClientApp and the site's own state."""
