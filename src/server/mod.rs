//! pg-wire server.
