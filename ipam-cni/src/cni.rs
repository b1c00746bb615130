//! The CNI protocol front end: verbs, config, results and errors.
