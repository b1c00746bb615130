//! The datastore conformance suite: one set of checks for every `Datastore`.
