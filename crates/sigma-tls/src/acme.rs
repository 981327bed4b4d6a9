//! ACME (RFC 8555) for `S`: added in the next commit.
