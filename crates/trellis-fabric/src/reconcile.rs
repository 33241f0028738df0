//! The one reconciler every backend shares: diff [`Desired`] against the kernel, apply
//! the difference, report what changed. Owns only routes with [`ROUTE_PROTO`] and the
//! devices for which [`naming::is_fabric_device`] holds (with their neighbour and FDB
//! entries); everything else in the namespace is left alone.
