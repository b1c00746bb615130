//! Consistency checks over a whole datastore, for `ipamctl check`.
