//! The TLS layer of every connection (raftkv-net's `tls`), handshake by
//! handshake, with certificates made at run time: who is let in, as what,
//! and that replaced certificate files are used by new connections.

use std::sync::Arc;

use raftkv_net::tls::{
    CertFiles, ClientTls, ClientTlsFiles, ConnInfo, MaybeTls, ServerTls, ServerTlsFiles,
};
use raftkv_testkit::pki::{Issued, TestCa, Validity};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

fn files(issued: &Issued) -> CertFiles {
    CertFiles {
        cert: issued.cert.clone(),
        key: issued.key.clone(),
    }
}

struct Pki {
    _dir: tempfile::TempDir,
    client_ca: TestCa,
    peer_ca: TestCa,
    other_ca: TestCa,
    server: ServerTlsFiles,
}

fn pki() -> Pki {
    let dir = tempfile::tempdir().unwrap();
    let client_ca = TestCa::new(dir.path(), "client-ca");
    let peer_ca = TestCa::new(dir.path(), "peer-ca");
    let other_ca = TestCa::new(&dir.path().join("other"), "other-ca");
    let server = ServerTlsFiles {
        client: Some(files(&client_ca.issue("server"))),
        trusted_ca: Some(client_ca.cert.clone()),
        client_cert_auth: true,
        peer: Some(files(&peer_ca.issue("peer-server"))),
        peer_trusted_ca: Some(peer_ca.cert.clone()),
        peer_allowed_cn: None,
    };
    Pki {
        _dir: dir,
        client_ca,
        peer_ca,
        other_ca,
        server,
    }
}

/// Accepts connections forever, reporting what each was accepted as (or
/// why not), and echoing one line on accepted ones.
async fn serve(
    tls: Arc<ServerTls>,
) -> (
    u16,
    tokio::sync::mpsc::UnboundedReceiver<Result<ConnInfo, String>>,
) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            let tls = tls.clone();
            let tx = tx.clone();
            tokio::spawn(async move {
                match tls.accept(stream).await {
                    Ok((mut io, info)) => {
                        let _ = tx.send(Ok(info));
                        let mut buf = [0u8; 5];
                        if io.read_exact(&mut buf).await.is_ok() {
                            let _ = io.write_all(&buf).await;
                            let _ = io.flush().await;
                        }
                    }
                    Err(e) => {
                        let _ = tx.send(Err(e.to_string()));
                    }
                }
            });
        }
    });
    (port, rx)
}

async fn connect(port: u16, client: &ClientTlsFiles) -> Result<MaybeTls, String> {
    let tls = ClientTls::new(client).map_err(|e| e.to_string())?;
    let stream = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let mut io = MaybeTls::Client(Box::new(
        tls.connect("127.0.0.1", stream)
            .await
            .map_err(|e| e.to_string())?,
    ));
    // TLS 1.3 reports a refused client certificate only on the first read.
    io.write_all(b"hello").await.map_err(|e| e.to_string())?;
    io.flush().await.map_err(|e| e.to_string())?;
    let mut buf = [0u8; 5];
    io.read_exact(&mut buf).await.map_err(|e| e.to_string())?;
    assert_eq!(&buf, b"hello");
    Ok(io)
}

fn served_certificate(io: &MaybeTls) -> Vec<u8> {
    match io {
        MaybeTls::Client(tls) => tls.get_ref().1.peer_certificates().unwrap()[0].to_vec(),
        _ => panic!("not a TLS client connection"),
    }
}

#[tokio::test]
async fn clients_and_members_are_told_apart_by_their_certificates() {
    let pki = pki();
    let tls = ServerTls::new(&pki.server).unwrap().unwrap();
    let (port, mut accepted) = serve(tls).await;

    let client = ClientTlsFiles {
        trusted_ca: pki.client_ca.cert.clone(),
        identity: Some(files(&pki.client_ca.issue("alice"))),
        peer: false,
    };
    connect(port, &client)
        .await
        .expect("a client with a CA-signed certificate");
    let info = accepted.recv().await.unwrap().unwrap();
    assert!(info.tls && info.client_cert && !info.peer, "{info:?}");

    // A member asks for the peer certificate (it would not trust the
    // client-facing one) and is marked as a member.
    let member = ClientTlsFiles {
        trusted_ca: pki.peer_ca.cert.clone(),
        identity: Some(files(&pki.peer_ca.issue("peer-2"))),
        peer: true,
    };
    connect(port, &member).await.expect("a member");
    let info = accepted.recv().await.unwrap().unwrap();
    assert!(info.tls && info.client_cert && info.peer, "{info:?}");

    // No certificate: let in at the handshake (the server's policy decides).
    let anonymous = ClientTlsFiles {
        identity: None,
        ..client.clone()
    };
    connect(port, &anonymous)
        .await
        .expect("no client certificate");
    let info = accepted.recv().await.unwrap().unwrap();
    assert!(info.tls && !info.client_cert && !info.peer, "{info:?}");

    // Plaintext is accepted as such.
    let mut plain = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    plain.write_all(b"hello").await.unwrap();
    let info = accepted.recv().await.unwrap().unwrap();
    assert!(!info.tls && !info.client_cert, "{info:?}");
}

/// `--peer-cert-allowed-cn`: with one CA for clients and members, a
/// certificate is a member's only if its CN is the one allowed; a client's
/// certificate from the same CA is then a user (its CN), never a member.
#[tokio::test]
async fn with_one_ca_only_the_allowed_cn_is_a_member() {
    let pki = pki();
    let one_ca = ServerTlsFiles {
        trusted_ca: Some(pki.peer_ca.cert.clone()),
        peer_allowed_cn: Some("member".into()),
        ..pki.server.clone()
    };
    let tls = ServerTls::new(&one_ca).unwrap().unwrap();
    let (port, mut accepted) = serve(tls).await;
    let as_member = |name: &str| ClientTlsFiles {
        trusted_ca: pki.peer_ca.cert.clone(),
        identity: Some(files(&pki.peer_ca.issue(name))),
        peer: true,
    };
    connect(port, &as_member("member"))
        .await
        .expect("the members' CN");
    let info = accepted.recv().await.unwrap().unwrap();
    assert!(info.peer, "{info:?}");
    connect(port, &as_member("alice"))
        .await
        .expect("alice, same CA");
    let info = accepted.recv().await.unwrap().unwrap();
    assert!(info.client_cert && !info.peer, "{info:?}");
    assert_eq!(info.certificate_user(), Some("alice"));
}

#[tokio::test]
async fn certificates_from_another_ca_or_expired_are_refused() {
    let pki = pki();
    let tls = ServerTls::new(&pki.server).unwrap().unwrap();
    let (port, mut accepted) = serve(tls).await;

    let stranger = ClientTlsFiles {
        trusted_ca: pki.client_ca.cert.clone(),
        identity: Some(files(&pki.other_ca.issue("mallory"))),
        peer: false,
    };
    let error = connect(port, &stranger).await.expect_err("refused");
    assert!(error.contains("authority it does not trust"), "{error}");
    let refused = accepted.recv().await.unwrap().unwrap_err();
    assert!(refused.contains("UnknownIssuer"), "{refused}");

    let expired = ClientTlsFiles {
        identity: Some(files(&pki.client_ca.issue_with("old", Validity::Expired))),
        ..stranger.clone()
    };
    connect(port, &expired).await.expect_err("refused");
    let refused = accepted.recv().await.unwrap().unwrap_err();
    assert!(refused.contains("expired"), "{refused}");

    // The client refuses a server whose certificate its CA did not sign.
    let distrustful = ClientTlsFiles {
        trusted_ca: pki.other_ca.cert.clone(),
        identity: None,
        peer: false,
    };
    let error = connect(port, &distrustful).await.expect_err("refused");
    assert!(
        error.contains("certificate signed by unknown authority"),
        "{error}"
    );
}

#[tokio::test]
async fn replaced_certificate_files_are_used_by_new_connections() {
    let pki = pki();
    let tls = ServerTls::new(&pki.server).unwrap().unwrap();
    let (port, mut accepted) = serve(tls).await;
    let member = ClientTlsFiles {
        trusted_ca: pki.peer_ca.cert.clone(),
        identity: Some(files(&pki.peer_ca.issue("peer-2"))),
        peer: true,
    };
    let before = connect(port, &member).await.unwrap();
    accepted.recv().await.unwrap().unwrap();

    // Rotation: the same files, a new certificate and key.
    pki.peer_ca.issue("peer-server");
    let after = connect(port, &member).await.unwrap();
    accepted.recv().await.unwrap().unwrap();
    assert_ne!(served_certificate(&before), served_certificate(&after));
    let certificate_file =
        std::fs::read_to_string(pki.server.peer.as_ref().unwrap().cert.clone()).unwrap();
    let pem_body: String = certificate_file
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .collect();
    let served = served_certificate(&after);
    assert_eq!(
        pem_body,
        base64_encode(&served),
        "the new connection is served the new file's certificate"
    );

    // A broken replacement (a key that does not match) is not taken: the
    // last good certificate goes on serving.
    std::fs::copy(
        &pki.server.client.as_ref().unwrap().key,
        &pki.server.peer.as_ref().unwrap().key,
    )
    .unwrap();
    let still = connect(port, &member).await.unwrap();
    assert_eq!(served_certificate(&still), served);
}

fn base64_encode(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

#[test]
fn incomplete_settings_are_refused_with_what_is_missing() {
    let pki = pki();
    let no_ca = ServerTlsFiles {
        trusted_ca: None,
        ..pki.server.clone()
    };
    let error = ServerTls::new(&no_ca).err().unwrap().to_string();
    assert!(
        error.contains("--client-cert-auth needs --trusted-ca-file"),
        "{error}"
    );
    let no_peer_ca = ServerTlsFiles {
        peer_trusted_ca: None,
        ..pki.server.clone()
    };
    let error = ServerTls::new(&no_peer_ca).err().unwrap().to_string();
    assert!(error.contains("--peer-trusted-ca-file"), "{error}");
    let missing = ServerTlsFiles {
        client: Some(CertFiles {
            cert: "/nonexistent/cert.pem".into(),
            key: "/nonexistent/key.pem".into(),
        }),
        ..pki.server.clone()
    };
    let error = ServerTls::new(&missing).err().unwrap().to_string();
    assert!(error.contains("/nonexistent/cert.pem"), "{error}");
    assert!(ServerTls::new(&ServerTlsFiles::default())
        .unwrap()
        .is_none());
}
