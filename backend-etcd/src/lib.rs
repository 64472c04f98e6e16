//! placeholder: the etcd backend is being written.
