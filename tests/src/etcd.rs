//! A real etcd server for tests: started on free loopback ports, stopped on drop.
