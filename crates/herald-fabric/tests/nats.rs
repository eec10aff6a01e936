//! The NATS fabric against a real `nats-server` each test starts on a free port of its own
//! (install it with `scripts/nats-up` or `apt-get install nats-server`). Without the binary
//! the tests fail, unless `HERALD_SKIP_NATS=1` says to skip them.

#[cfg(not(feature = "nats"))]
#[test]
fn nats_fabric() {
    println!("SKIPPED nats_fabric: herald-fabric built without `--features nats`");
}

#[cfg(feature = "nats")]
mod real {
    use bytes::Bytes;
    use herald_fabric::{Fabric, FabricMessage, Incoming, NatsAuth, NatsFabric, NatsOptions};
    use std::net::{TcpListener, TcpStream};
    use std::path::PathBuf;
    use std::process::{Child, Command, Stdio};
    use std::sync::Arc;
    use std::time::Duration;
    use tokio::sync::mpsc;
    use tokio::time::{timeout, Instant};

    const WAIT: Duration = Duration::from_secs(5);

    /// The `nats-server` binary, or None when the tests are to be skipped.
    fn nats_server_bin() -> Option<PathBuf> {
        // The fabric's log lines show with `--nocapture` (RUST_LOG overrides the filter).
        let filter = tracing_subscriber::EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("herald_fabric=debug"));
        let _ = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_test_writer()
            .try_init();
        if let Some(p) = std::env::var_os("HERALD_NATS_SERVER") {
            return Some(PathBuf::from(p));
        }
        let path = std::env::var_os("PATH").unwrap_or_default();
        // Debian installs it in /usr/sbin, which is not on every user's PATH.
        let sbin = ["/usr/sbin", "/usr/local/sbin"].map(PathBuf::from);
        let found = std::env::split_paths(&path)
            .chain(sbin)
            .map(|dir| dir.join("nats-server"))
            .find(|p| p.is_file());
        if found.is_none() {
            if std::env::var("HERALD_SKIP_NATS").as_deref() == Ok("1") {
                println!("SKIPPED: nats-server not found and HERALD_SKIP_NATS=1");
                return None;
            }
            panic!(
                "nats-server not found on PATH: install it (scripts/nats-up does, or \
                 `apt-get install nats-server`), point HERALD_NATS_SERVER at it, \
                 or set HERALD_SKIP_NATS=1 to skip the NATS fabric tests"
            );
        }
        found
    }

    fn free_port() -> u16 {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        listener.local_addr().expect("local addr").port()
    }

    /// A nats-server child process, killed when dropped.
    struct NatsServer {
        child: Child,
        port: u16,
    }

    impl NatsServer {
        fn start(bin: &PathBuf, port: u16) -> NatsServer {
            let child = Command::new(bin)
                .args(["-a", "127.0.0.1", "-p", &port.to_string()])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap_or_else(|e| panic!("starting {}: {e}", bin.display()));
            let mut server = NatsServer { child, port };
            let deadline = std::time::Instant::now() + WAIT;
            while TcpStream::connect(("127.0.0.1", port)).is_err() {
                if let Ok(Some(status)) = server.child.try_wait() {
                    panic!("nats-server on port {port} exited during startup: {status}");
                }
                assert!(
                    std::time::Instant::now() < deadline,
                    "nats-server did not accept connections on 127.0.0.1:{port} within {WAIT:?}"
                );
                std::thread::sleep(Duration::from_millis(10));
            }
            server
        }

        /// A server with `extra` flags (auth, TLS) on a port it picks itself and reports in
        /// its ports file: a port picked here could meanwhile be taken by another test's
        /// server, whose clients and restarts would then be this test's.
        fn start_with(bin: &PathBuf, dir: &std::path::Path, extra: &[&str]) -> NatsServer {
            let child = Command::new(bin)
                .args(["-a", "127.0.0.1", "-p", "-1", "--ports_file_dir"])
                .arg(dir)
                .args(extra)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap_or_else(|e| panic!("starting {}: {e}", bin.display()));
            let file = dir.join(format!("nats-server_{}.ports", child.id()));
            let mut server = NatsServer { child, port: 0 };
            let deadline = std::time::Instant::now() + WAIT;
            loop {
                let port = std::fs::read_to_string(&file).ok().and_then(|text| {
                    let at = text.find("127.0.0.1:")? + "127.0.0.1:".len();
                    let digits: String = text[at..]
                        .chars()
                        .take_while(char::is_ascii_digit)
                        .collect();
                    digits.parse::<u16>().ok()
                });
                if let Some(port) = port.filter(|p| TcpStream::connect(("127.0.0.1", *p)).is_ok()) {
                    server.port = port;
                    return server;
                }
                if let Ok(Some(status)) = server.child.try_wait() {
                    panic!("nats-server exited during startup: {status}");
                }
                assert!(
                    std::time::Instant::now() < deadline,
                    "nats-server wrote no ports file {} within {WAIT:?}",
                    file.display()
                );
                std::thread::sleep(Duration::from_millis(10));
            }
        }

        fn url(&self) -> String {
            format!("nats://127.0.0.1:{}", self.port)
        }
    }

    impl Drop for NatsServer {
        fn drop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }

    async fn pair(url: &str) -> (NatsFabric, mpsc::Receiver<Incoming>, NatsFabric) {
        let mut o = NatsOptions::new([url]);
        o.name = "herald-test-node".into();
        let (node, rx) = NatsFabric::connect(o).await.expect("node connect");
        let mut o = NatsOptions::new([url]);
        o.name = "herald-test-dispatcher".into();
        // A publish-only fabric drops its receiver.
        let (dispatcher, _) = NatsFabric::connect(o).await.expect("dispatcher connect");
        (node, rx, dispatcher)
    }

    fn msg(channel: &str, seq: u64) -> FabricMessage {
        FabricMessage {
            channel: Arc::from(channel),
            epoch: if seq == 0 { 0 } else { 42 },
            seq,
            ts_ms: 1_700_000_000_123 + seq,
            event: Arc::from("comment"),
            data: Bytes::from(format!(r#"{{"n":{seq},"text":"h\u00e9 there"}}"#)),
            conflation_key: (seq == 0).then(|| Arc::from("viewers")),
            trace: None,
            sent_us: 0,
        }
    }

    async fn next(rx: &mut mpsc::Receiver<Incoming>) -> Incoming {
        match timeout(WAIT, rx.recv()).await {
            Ok(Some(i)) => i,
            Ok(None) => panic!("incoming queue closed"),
            Err(_) => panic!("nothing arrived within {WAIT:?}"),
        }
    }

    async fn expect_resync(rx: &mut mpsc::Receiver<Incoming>, channel: Option<&str>) {
        match next(rx).await {
            Incoming::Resync(c) => assert_eq!(c.as_deref(), channel),
            other => panic!("expected Resync({channel:?}), got {other:?}"),
        }
    }

    async fn expect_message(rx: &mut mpsc::Receiver<Incoming>, want: &FabricMessage) {
        match next(rx).await {
            Incoming::Message(m) => {
                assert_eq!(m.channel, want.channel);
                assert_eq!(m.epoch, want.epoch);
                assert_eq!(m.seq, want.seq);
                assert_eq!(m.ts_ms, want.ts_ms);
                assert_eq!(m.event, want.event);
                assert_eq!(m.data, want.data);
                assert_eq!(m.conflation_key, want.conflation_key);
            }
            other => panic!(
                "expected message seq {} of {}, got {other:?}",
                want.seq, want.channel
            ),
        }
    }

    async fn wait_until(what: &str, cond: impl Fn() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(8);
        while !cond() {
            assert!(Instant::now() < deadline, "timed out waiting until {what}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// A node and a dispatcher fabric set up by `secure`; whether a message gets through
    /// within a few seconds.
    async fn flows(url: &str, secure: impl Fn(&mut NatsOptions)) -> bool {
        let mut o = NatsOptions::new([url]);
        secure(&mut o);
        let (node, mut rx) = NatsFabric::connect(o.clone()).await.expect("node");
        let (dispatcher, _) = NatsFabric::connect(o).await.expect("dispatcher");
        node.set_interest("live:s", true);
        let deadline = Instant::now() + Duration::from_secs(3);
        let mut got = false;
        while !got && Instant::now() < deadline {
            if node.is_ready() && dispatcher.is_ready() {
                let _ = dispatcher.publish(vec![msg("live:s", 1)]).await;
            }
            if let Ok(Some(Incoming::Message(m))) =
                timeout(Duration::from_millis(200), rx.recv()).await
            {
                got = m.seq == 1;
            }
        }
        node.shutdown().await;
        dispatcher.shutdown().await;
        got
    }

    #[tokio::test]
    async fn a_server_requiring_credentials_and_tls_gets_them() {
        let Some(bin) = nats_server_bin() else { return };
        let dir = tempfile::tempdir().expect("tempdir");
        let token = NatsServer::start_with(&bin, dir.path(), &["--auth", "fabric-token-123456"]);
        assert!(
            !flows(&token.url(), |_| {}).await,
            "no token, yet it flowed"
        );
        let wrong = |o: &mut NatsOptions| o.auth = NatsAuth::Token("nope".into());
        assert!(
            !flows(&token.url(), wrong).await,
            "a wrong token, yet it flowed"
        );
        let right = |o: &mut NatsOptions| o.auth = NatsAuth::Token("fabric-token-123456".into());
        assert!(
            flows(&token.url(), right).await,
            "the token did not get through"
        );
        drop(token);

        let ck = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned()]).expect("cert");
        let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
        std::fs::write(&cert, ck.cert.pem()).expect("write cert");
        std::fs::write(&key, ck.key_pair.serialize_pem()).expect("write key");
        let (c, k) = (cert.display().to_string(), key.display().to_string());
        let tls = NatsServer::start_with(
            &bin,
            dir.path(),
            &[
                "--tls",
                "--tlscert",
                &c,
                "--tlskey",
                &k,
                "--user",
                "herald",
                "--pass",
                "pw-123456",
            ],
        );
        let user = |o: &mut NatsOptions| {
            o.auth = NatsAuth::UserPassword {
                user: "herald".into(),
                password: "pw-123456".into(),
            }
        };
        assert!(!flows(&tls.url(), user).await, "no TLS, yet it flowed");
        let over_tls = |o: &mut NatsOptions| {
            user(o);
            o.tls_ca = Some(cert.clone());
        };
        assert!(
            flows(&tls.url(), over_tls).await,
            "TLS with the CA did not get through"
        );
    }

    #[tokio::test]
    async fn interested_node_receives_what_a_dispatcher_publishes() {
        let Some(bin) = nats_server_bin() else { return };
        let dir = tempfile::tempdir().expect("tempdir");
        let server = NatsServer::start_with(&bin, dir.path(), &[]);
        let (node, mut rx, dispatcher) = pair(&server.url()).await;

        node.set_interest("live:a.b", true);
        expect_resync(&mut rx, Some("live:a.b")).await;
        assert!(node.is_ready());

        let (reliable, ephemeral) = (msg("live:a.b", 7), msg("live:a.b", 0));
        dispatcher
            .publish(vec![reliable.clone(), ephemeral.clone()])
            .await
            .expect("publish");
        expect_message(&mut rx, &reliable).await;
        expect_message(&mut rx, &ephemeral).await;

        assert_eq!(dispatcher.stats().published, 2);
        let s = node.stats();
        assert_eq!(
            (s.received, s.decode_errors, s.dropped_ephemeral),
            (2, 0, 0)
        );

        node.shutdown().await;
        dispatcher.shutdown().await;
        assert!(!node.is_ready());
        assert!(matches!(
            dispatcher.publish(vec![msg("live:a.b", 8)]).await,
            Err(herald_fabric::FabricError::Closed)
        ));
    }

    #[tokio::test]
    async fn only_channels_of_interest_arrive() {
        let Some(bin) = nats_server_bin() else { return };
        let dir = tempfile::tempdir().expect("tempdir");
        let server = NatsServer::start_with(&bin, dir.path(), &[]);
        let (node, mut rx, dispatcher) = pair(&server.url()).await;

        node.set_interest("live:x", true);
        expect_resync(&mut rx, Some("live:x")).await;

        // One connection's messages reach a subscriber in publish order, so once live:x's
        // arrives, live:y's would already be here had it been routed to this node.
        dispatcher.publish(vec![msg("live:y", 1)]).await.unwrap();
        dispatcher.publish(vec![msg("live:x", 1)]).await.unwrap();
        expect_message(&mut rx, &msg("live:x", 1)).await;
        assert!(
            timeout(Duration::from_millis(200), rx.recv())
                .await
                .is_err(),
            "something arrived for a channel without interest"
        );

        // Losing interest; live:z's resync proves the manager applied the change.
        node.set_interest("live:x", false);
        node.set_interest("live:z", true);
        expect_resync(&mut rx, Some("live:z")).await;
        dispatcher.publish(vec![msg("live:x", 2)]).await.unwrap();
        dispatcher.publish(vec![msg("live:z", 1)]).await.unwrap();
        expect_message(&mut rx, &msg("live:z", 1)).await;
        assert!(
            timeout(Duration::from_millis(200), rx.recv())
                .await
                .is_err(),
            "a message arrived after interest was withdrawn"
        );

        // Interest again: a fresh resync, then live messages.
        node.set_interest("live:x", true);
        expect_resync(&mut rx, Some("live:x")).await;
        dispatcher.publish(vec![msg("live:x", 3)]).await.unwrap();
        expect_message(&mut rx, &msg("live:x", 3)).await;

        node.shutdown().await;
        dispatcher.shutdown().await;
    }

    #[tokio::test]
    async fn starts_while_nats_is_down() {
        let Some(bin) = nats_server_bin() else { return };
        let port = free_port();
        // Nothing listens yet: connect still succeeds and keeps retrying in the background.
        let (node, mut rx, dispatcher) = pair(&format!("nats://127.0.0.1:{port}")).await;
        assert!(!node.is_ready());
        node.set_interest("live:late", true);
        assert!(
            timeout(Duration::from_millis(200), rx.recv())
                .await
                .is_err(),
            "a resync came before the subscription could be active"
        );

        let _server = NatsServer::start(&bin, port);
        expect_resync(&mut rx, Some("live:late")).await;
        assert!(node.is_ready());
        wait_until("the dispatcher is connected", || dispatcher.is_ready()).await;
        dispatcher.publish(vec![msg("live:late", 1)]).await.unwrap();
        expect_message(&mut rx, &msg("live:late", 1)).await;
        // The first connection is no reconnect: nothing was missed that the store read
        // after the channel's resync would not show.
        assert_eq!(node.stats().reconnects, 0);
        assert!(timeout(Duration::from_millis(100), rx.recv())
            .await
            .is_err());

        node.shutdown().await;
        dispatcher.shutdown().await;
    }

    #[tokio::test]
    async fn survives_a_server_restart() {
        let Some(bin) = nats_server_bin() else { return };
        let port = free_port();
        let server = NatsServer::start(&bin, port);
        let (node, mut rx, dispatcher) = pair(&server.url()).await;

        node.set_interest("live:r", true);
        expect_resync(&mut rx, Some("live:r")).await;
        wait_until("the dispatcher is connected", || dispatcher.is_ready()).await;
        dispatcher.publish(vec![msg("live:r", 1)]).await.unwrap();
        expect_message(&mut rx, &msg("live:r", 1)).await;

        drop(server);
        wait_until("the node notices the loss", || !node.is_ready()).await;
        wait_until("the dispatcher notices the loss", || !dispatcher.is_ready()).await;

        let _server = NatsServer::start(&bin, port);
        wait_until("the node reconnects", || node.is_ready()).await;
        wait_until("the dispatcher reconnects", || dispatcher.is_ready()).await;
        // Sent only once the restored subscriptions are confirmed by the server.
        expect_resync(&mut rx, None).await;

        dispatcher.publish(vec![msg("live:r", 2)]).await.unwrap();
        expect_message(&mut rx, &msg("live:r", 2)).await;
        assert_eq!(node.stats().reconnects, 1);
        assert_eq!(dispatcher.stats().reconnects, 1);

        node.shutdown().await;
        dispatcher.shutdown().await;
    }
}
