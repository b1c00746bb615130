//! The model-based property test of the allocator, generic over the datastore.
