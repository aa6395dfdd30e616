"""titus: a TLS terminator with a jailed process per connection and a jailed key holder."""
