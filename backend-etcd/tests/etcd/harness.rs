//! The harness itself: etcd starts, answers, and is gone after drop.

use std::time::Instant;

use locksmith_etcd::testing::EtcdServer;

#[tokio::test]
async fn server_starts_answers_and_dies_on_drop() {
    let started = Instant::now();
    let server = EtcdServer::start().unwrap();
    println!("etcd ready in {:?}", started.elapsed());
    let endpoint = server.endpoint();
    let mut client = locksmith_etcd::etcd_client::Client::connect([server.client_url()], None)
        .await
        .unwrap();
    client.put("k", "v", None).await.unwrap();
    drop(server);
    assert!(
        std::net::TcpStream::connect(&endpoint).is_err(),
        "etcd still listening"
    );
}
