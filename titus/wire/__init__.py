"""The sans-IO formats that cross process boundaries: control (supervisor <-> worker),
keyproto (worker <-> key holder), proxyproto (supervisor -> backend)."""
