"""Pure rules of the inventory: what a host's answers mean, what makes a registration valid."""
