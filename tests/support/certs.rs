//! Test PKI generated with rcgen: a private CA, a `localhost`/127.0.0.1
//! server certificate and two client certificates signed by it, and an
//! unrelated "rogue" CA with its own `localhost` server certificate. PEM
//! files in a temporary folder that lives as long as [`Certs`], or in a
//! folder of the caller's ([`Certs::generate_in`]; the load bench includes
//! this file with `#[path]`).

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use std::path::{Path, PathBuf};

/// A certificate and its private key (PKCS#8), as PEM files.
#[derive(Debug, Clone)]
pub struct CertPair {
    pub cert: PathBuf,
    pub key: PathBuf,
}

#[derive(Debug)]
pub struct Certs {
    _dir: Option<tempfile::TempDir>,
    /// Folder holding the PEM files.
    pub dir: PathBuf,
    /// The platform's private CA (trusted by the gateway and the subscriber;
    /// signs the client certificates the platform broker accepts).
    pub ca: PathBuf,
    /// The platform broker: `localhost` and 127.0.0.1, signed by `ca`.
    pub server: CertPair,
    /// The gateway's client certificate, signed by `ca`.
    pub gateway: CertPair,
    /// The test subscriber's client certificate, signed by `ca`.
    pub subscriber: CertPair,
    /// An unrelated CA.
    pub rogue_ca: PathBuf,
    /// A `localhost`/127.0.0.1 server certificate signed by `rogue_ca`.
    pub rogue_server: CertPair,
    /// A client certificate signed by `rogue_ca` (not accepted by the platform).
    pub rogue_client: CertPair,
}

struct Ca {
    cert: rcgen::Certificate,
    key: KeyPair,
}

fn validity(p: &mut CertificateParams) {
    p.not_before = rcgen::date_time_ymd(2024, 1, 1);
    p.not_after = rcgen::date_time_ymd(2099, 1, 1);
}

fn name(cn: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "community-gateway e2e");
    dn.push(DnType::CommonName, cn);
    dn
}

fn ca(cn: &str) -> Ca {
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    validity(&mut p);
    p.distinguished_name = name(cn);
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let key = KeyPair::generate().unwrap();
    let cert = p.self_signed(&key).unwrap();
    Ca { cert, key }
}

fn leaf(ca: &Ca, cn: &str, server: bool) -> (rcgen::Certificate, KeyPair) {
    let sans: Vec<String> = if server {
        vec!["localhost".into(), "127.0.0.1".into()]
    } else {
        Vec::new()
    };
    let mut p = CertificateParams::new(sans).unwrap();
    validity(&mut p);
    p.distinguished_name = name(cn);
    p.use_authority_key_identifier_extension = true;
    p.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    p.extended_key_usages = vec![if server {
        ExtendedKeyUsagePurpose::ServerAuth
    } else {
        ExtendedKeyUsagePurpose::ClientAuth
    }];
    let key = KeyPair::generate().unwrap();
    let cert = p.signed_by(&key, &ca.cert, &ca.key).unwrap();
    (cert, key)
}

fn write(dir: &Path, file: &str, pem: &str) -> PathBuf {
    let path = dir.join(file);
    std::fs::write(&path, pem).unwrap();
    path
}

fn write_leaf(dir: &Path, stem: &str, (cert, key): (rcgen::Certificate, KeyPair)) -> CertPair {
    CertPair {
        cert: write(dir, &format!("{stem}.crt"), &cert.pem()),
        key: write(dir, &format!("{stem}.key"), &key.serialize_pem()),
    }
}

impl Certs {
    /// In a temporary folder removed with the returned value.
    pub fn generate() -> Certs {
        let tmp = tempfile::Builder::new()
            .prefix("cg-e2e-certs-")
            .tempdir()
            .unwrap();
        let mut certs = Certs::generate_in(tmp.path());
        certs._dir = Some(tmp);
        certs
    }

    /// In `dir`, which the caller keeps.
    pub fn generate_in(dir: &Path) -> Certs {
        let dir = dir.to_path_buf();
        // Brokers that drop root privileges (mosquitto) must still read these.
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let _ = std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755));
        }

        let main = ca("e2e platform CA");
        let rogue = ca("e2e rogue CA");
        let certs = Certs {
            ca: write(&dir, "ca.crt", &main.cert.pem()),
            server: write_leaf(&dir, "server", leaf(&main, "localhost", true)),
            gateway: write_leaf(&dir, "gateway", leaf(&main, "community-gateway", false)),
            subscriber: write_leaf(&dir, "subscriber", leaf(&main, "e2e-subscriber", false)),
            rogue_ca: write(&dir, "rogue-ca.crt", &rogue.cert.pem()),
            rogue_server: write_leaf(&dir, "rogue-server", leaf(&rogue, "localhost", true)),
            rogue_client: write_leaf(&dir, "rogue-client", leaf(&rogue, "rogue-client", false)),
            dir,
            _dir: None,
        };
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            for entry in std::fs::read_dir(&certs.dir).unwrap() {
                let path = entry.unwrap().path();
                let _ = std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644));
            }
        }
        certs
    }
}
