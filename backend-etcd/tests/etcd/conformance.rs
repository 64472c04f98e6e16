//! The shared behaviour suite on a real etcd.

use crate::common;

locksmith_api::conformance_tests!(common::Etcd::new());

mod election {
    use super::common;
    locksmith_api::election_conformance_tests!(common::Etcd::new());
}

mod rwlock {
    use super::common;
    locksmith_api::rwlock_conformance_tests!(common::Etcd::new());
}

mod semaphore {
    use super::common;
    locksmith_api::semaphore_conformance_tests!(common::Etcd::new());
}
