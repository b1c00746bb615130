//! `ipamctl`: the operator CLI.
