//! The `hookd` command line: `verify`, `config-check` and `migrate`, run
//! as a process.

mod common;

use std::io::Write;
use std::process::{Command, Output, Stdio};

use common::postgres::TestDatabase;

// The example of the Standard Webhooks specification.
const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const MSG_ID: &str = "msg_p5jXN8AQM9LWM0D4loKWxJek";
const TIMESTAMP: &str = "1614265330";
const SIGNATURE: &str = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";
const BODY: &[u8] = br#"{"test": 2432232314}"#;

fn hookd(args: &[&str], env: &[(&str, &str)], stdin: &[u8]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_hookd"));
    command
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // Only the variables of the test reach hookd, not those of the shell.
    for (key, _) in std::env::vars().filter(|(k, _)| k.starts_with("HOOKD_")) {
        command.env_remove(key);
    }
    for (key, value) in env {
        command.env(key, value);
    }
    let mut child = command.spawn().expect("start hookd");
    child
        .stdin
        .take()
        .expect("piped stdin")
        .write_all(stdin)
        .expect("write stdin");
    child.wait_with_output().expect("wait for hookd")
}

fn verify(extra: &[&str], body: &[u8]) -> Output {
    let mut args = vec![
        "verify",
        "--secret",
        SECRET,
        "--id",
        MSG_ID,
        "--timestamp",
        TIMESTAMP,
        "--signature",
        SIGNATURE,
    ];
    args.extend_from_slice(extra);
    hookd(&args, &[], body)
}

#[test]
fn verify_accepts_specification_example() {
    let output = verify(&["--ignore-timestamp"], BODY);
    assert_eq!(String::from_utf8_lossy(&output.stdout), "signature valid\n");
    assert!(output.status.success(), "{output:?}");
}

#[test]
fn verify_rejects_old_timestamp() {
    let output = verify(&[], BODY);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("timestamp is"), "{stderr}");
}

#[test]
fn verify_rejects_changed_body() {
    let output = verify(&["--ignore-timestamp"], br#"{"test": 2432232315}"#);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("signature invalid"), "{stderr}");
}

#[test]
fn verify_names_malformed_secret() {
    let output = hookd(
        &[
            "verify",
            "--secret",
            "bad",
            "--id",
            MSG_ID,
            "--timestamp",
            TIMESTAMP,
            "--signature",
            SIGNATURE,
        ],
        &[],
        BODY,
    );
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("invalid secret"), "{stderr}");
}

#[test]
fn config_check_prints_every_setting() {
    let output = hookd(
        &["config-check"],
        &[
            ("HOOKD_RETRY_SCHEDULE", "1s,2s"),
            ("HOOKD_ADMIN_TOKEN", "a-long-enough-admin-token"),
        ],
        b"",
    );
    assert!(output.status.success(), "{output:?}");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains("retry_schedule = [1s, 2s]"), "{stdout}");
    assert!(stdout.contains("admin_token = (set)"), "{stdout}");
    assert!(
        !stdout.contains("a-long-enough-admin-token"),
        "the token must not be printed: {stdout}"
    );
    for key in [
        "listen",
        "circuit_breaker_failures",
        "disable_endpoint_after",
        "operational_webhook_urls",
        "log_format",
    ] {
        assert!(
            stdout.contains(&format!("{key} = ")),
            "{key} missing from:\n{stdout}"
        );
    }
}

#[test]
fn config_check_prints_dns_servers() {
    let output = hookd(&["config-check"], &[], b"");
    assert!(output.status.success(), "{output:?}");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        stdout.contains("dns_servers = [] (system resolver)\n"),
        "{stdout}"
    );

    let output = hookd(
        &["config-check"],
        &[("HOOKD_DNS_SERVERS", "127.0.0.1:5353, ::1")],
        b"",
    );
    assert!(output.status.success(), "{output:?}");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        stdout.contains("dns_servers = [127.0.0.1:5353, [::1]:53]\n"),
        "{stdout}"
    );
}

#[test]
fn invalid_setting_exits_with_its_name() {
    let output = hookd(
        &["config-check"],
        &[("HOOKD_REQUEST_TIMEOUT", "ten seconds")],
        b"",
    );
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("HOOKD_REQUEST_TIMEOUT"), "{stderr}");
    assert!(stderr.contains("example of a valid value: 10s"), "{stderr}");
}

#[test]
fn config_check_prints_limit_settings() {
    let output = hookd(
        &["config-check"],
        &[
            ("HOOKD_HTTPS_ONLY", "true"),
            ("HOOKD_API_REQUESTS_PER_SECOND", "500"),
        ],
        b"",
    );
    assert!(output.status.success(), "{output:?}");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains("https_only = true\n"), "{stdout}");
    assert!(
        stdout.contains("api_requests_per_second = 500\n"),
        "{stdout}"
    );
}

#[test]
fn config_check_hides_encryption_key() {
    let key = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";

    let output = hookd(&["config-check"], &[("HOOKD_ENCRYPTION_KEY", key)], b"");

    assert!(output.status.success(), "{output:?}");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains("encryption_key = (set)\n"), "{stdout}");
    assert!(
        !stdout.contains(key),
        "the key must not be printed: {stdout}"
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        !stderr.contains(key),
        "the key must not be logged: {stderr}"
    );
}

#[test]
fn invalid_encryption_key_exits_with_its_name() {
    let key = "0123456789abcdef";

    let output = hookd(&["config-check"], &[("HOOKD_ENCRYPTION_KEY", key)], b"");

    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("HOOKD_ENCRYPTION_KEY"), "{stderr}");
    assert!(stderr.contains("must be 32 bytes"), "{stderr}");
    assert!(
        !stderr.contains(key),
        "the key must not be printed: {stderr}"
    );
}

#[test]
fn migrate_sqlite_reports_schema_version() {
    let dir = tempfile::tempdir().expect("create a temporary folder");
    let data_dir = dir.path().join("data");
    let data_dir_text = data_dir.to_str().expect("a UTF-8 path");

    // The first run creates the database, the second finds it up to date.
    for run in ["first", "second"] {
        let output = hookd(&["migrate"], &[("HOOKD_DATA_DIR", data_dir_text)], b"");
        assert_eq!(output.status.code(), Some(0), "{run} run: {output:?}");
        assert_eq!(
            String::from_utf8_lossy(&output.stdout),
            format!("database {data_dir_text}/hookd.sqlite3 is up to date (schema version 6)\n"),
            "{run} run"
        );
    }
}

#[test]
fn migrate_postgres_reports_schema_version() {
    let database = TestDatabase::create();

    for run in ["first", "second"] {
        let output = hookd(&["migrate"], &[("HOOKD_DATABASE_URL", &database.url)], b"");
        assert_eq!(output.status.code(), Some(0), "{run} run: {output:?}");
        assert_eq!(
            String::from_utf8_lossy(&output.stdout),
            format!(
                "database {} is up to date (schema version 2)\n",
                database.url
            ),
            "{run} run"
        );
    }
}

#[test]
fn migrate_names_missing_postgres_database() {
    let database = TestDatabase::create();
    let missing = database.url.replace(&database.name, "hookd_test_missing");

    let output = hookd(&["migrate"], &[("HOOKD_DATABASE_URL", &missing)], b"");

    assert_eq!(output.status.code(), Some(1), "{output:?}");
    assert_eq!(String::from_utf8_lossy(&output.stdout), "");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(&format!(
            "hookd: cannot open the database at {missing}: db error: FATAL: database \"hookd_test_missing\" does not exist"
        )),
        "{stderr}"
    );
}
