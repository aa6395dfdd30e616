"""Code that runs in the zygote and in every per-connection worker jail."""
