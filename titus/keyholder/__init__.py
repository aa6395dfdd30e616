"""Code that runs in the key-holder jail: the only process that reads private keys."""
