//! Which datastore the plugin and `ipamctl` use, and opening it.
