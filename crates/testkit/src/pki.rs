//! A throwaway PKI for TLS tests: certificate authorities and certificates
//! made at run time (rcgen) and written as PEM files, as an operator's
//! would be.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose,
};

/// A certificate and its key, as files.
#[derive(Clone, Debug)]
pub struct Issued {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// A certificate authority whose certificate is at [`TestCa::cert`].
pub struct TestCa {
    dir: PathBuf,
    certificate: rcgen::Certificate,
    key: KeyPair,
    /// The CA's certificate (PEM): what `--trusted-ca-file` and `--cacert`
    /// take.
    pub cert: PathBuf,
}

/// How long an issued certificate is valid.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Validity {
    /// From yesterday for ten years.
    Current,
    /// Expired: valid in 2020 only.
    Expired,
}

impl TestCa {
    /// A new CA named `name`; its files go in `dir`.
    pub fn new(dir: &Path, name: &str) -> TestCa {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let key = KeyPair::generate().expect("CA key");
        let certificate = params.self_signed(&key).expect("self-signed CA");
        std::fs::create_dir_all(dir).expect("PKI directory");
        let cert = dir.join(format!("{name}.pem"));
        std::fs::write(&cert, certificate.pem()).expect("write CA certificate");
        TestCa {
            dir: dir.to_path_buf(),
            certificate,
            key,
            cert,
        }
    }

    /// A certificate with common name `name` for loopback (IP 127.0.0.1
    /// and ::1, DNS localhost), good for serving and as a client's, written
    /// to `<name>.pem` and `<name>-key.pem` (replacing them: a rotation).
    pub fn issue(&self, name: &str) -> Issued {
        self.issue_with(name, Validity::Current)
    }

    pub fn issue_with(&self, name: &str, validity: Validity) -> Issued {
        self.issue_for(name, &["127.0.0.1", "::1", "localhost"], validity)
    }

    /// A certificate naming only `hosts` (IP addresses or DNS names).
    pub fn issue_for(&self, name: &str, hosts: &[&str], validity: Validity) -> Issued {
        let mut params =
            CertificateParams::new(hosts.iter().map(|h| h.to_string()).collect::<Vec<_>>())
                .expect("certificate params");
        params.distinguished_name.push(DnType::CommonName, name);
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        match validity {
            Validity::Current => {
                params.not_before = rcgen::date_time_ymd(2024, 1, 1);
                params.not_after = rcgen::date_time_ymd(2099, 1, 1);
            }
            Validity::Expired => {
                params.not_before = rcgen::date_time_ymd(2020, 1, 1);
                params.not_after = rcgen::date_time_ymd(2020, 12, 31);
            }
        }
        let key = KeyPair::generate().expect("key");
        let certificate = params
            .signed_by(&key, &self.certificate, &self.key)
            .expect("signed certificate");
        let issued = Issued {
            cert: self.dir.join(format!("{name}.pem")),
            key: self.dir.join(format!("{name}-key.pem")),
        };
        // Written beside and renamed in, as an operator's rotation should:
        // a reader never sees half a file.
        write_atomically(&issued.key, &key.serialize_pem());
        write_atomically(&issued.cert, &certificate.pem());
        issued
    }
}

fn write_atomically(path: &Path, text: &str) {
    let temporary = path.with_extension("tmp");
    std::fs::write(&temporary, text).expect("write PEM");
    std::fs::rename(&temporary, path).expect("rename PEM");
}
