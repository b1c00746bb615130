//! The datastore conformance suite on `EtcdStore`, each check against its own real etcd.

ipam_tests::datastore_conformance!(ipam_tests::etcd::fresh().await);
