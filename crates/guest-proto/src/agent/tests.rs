use std::io::Cursor;

use super::*;

fn line(frame: &Frame) -> String {
    String::from_utf8(encode(frame)).unwrap()
}

fn read_all(input: &[u8]) -> Vec<Result<Frame, String>> {
    let mut reader = FrameReader::new(Cursor::new(input.to_vec()));
    let mut out = Vec::new();
    loop {
        match reader.next_frame() {
            Ok(Some(f)) => out.push(Ok(f)),
            Ok(None) => return out,
            Err(e) => {
                out.push(Err(e.to_string()));
                return out;
            }
        }
    }
}

#[test]
fn upstream_frames_encode_as_go_does() {
    let exec = Request::Exec(ExecRequest {
        argv: vec!["sh".into(), "-c".into(), "echo hi".into()],
        env: [("B".into(), "2".into()), ("A".into(), "1".into())].into(),
        ..ExecRequest::default()
    });
    assert_eq!(
        line(&(&exec).into()),
        "{\"type\":\"exec\",\"argv\":[\"sh\",\"-c\",\"echo hi\"],\"env\":{\"A\":\"1\",\"B\":\"2\"}}\n"
    );
    assert_eq!(
        line(&(&Input::Stdin(b"hi\n".to_vec())).into()),
        "{\"type\":\"stdin\",\"data\":\"aGkK\"}\n"
    );
    assert_eq!(
        line(&(&Input::StdinClose).into()),
        "{\"type\":\"stdin_close\"}\n"
    );
    assert_eq!(
        line(&(&Reply::Started { pid: 42 }).into()),
        "{\"type\":\"started\",\"pid\":42}\n"
    );
    assert_eq!(
        line(&(&Reply::Stderr(b"x".to_vec())).into()),
        "{\"type\":\"stderr\",\"data\":\"eA==\"}\n"
    );
    // Go's omitempty drops a zero exit code.
    assert_eq!(line(&(&Reply::Exit(0)).into()), "{\"type\":\"exit\"}\n");
    assert_eq!(
        line(&(&Reply::Exit(3)).into()),
        "{\"type\":\"exit\",\"exit_code\":3}\n"
    );
    let reseed = Request::Reseed(ReseedRequest {
        entropy: vec![0; 3],
        regen_machine_id: true,
    });
    assert_eq!(
        line(&(&reseed).into()),
        "{\"type\":\"reseed\",\"data\":\"AAAA\",\"regen_machine_id\":true}\n"
    );
}

#[test]
fn strings_are_escaped_html_safe_like_go() {
    let e = Reply::Error("a<b>&c\u{2028}\"\n".into());
    assert_eq!(
        line(&(&e).into()),
        "{\"type\":\"error\",\"message\":\"a\\u003cb\\u003e\\u0026c\\u2028\\\"\\n\"}\n"
    );
}

#[test]
fn extensions_come_after_upstream_fields() {
    let exec = Request::Exec(ExecRequest {
        argv: vec!["bash".into()],
        tty: Some(WinSize {
            rows: 30,
            cols: 100,
        }),
        cwd: "/tmp".into(),
        user: "1000:1000".into(),
        ..ExecRequest::default()
    });
    assert_eq!(
        line(&(&exec).into()),
        "{\"type\":\"exec\",\"argv\":[\"bash\"],\"tty\":true,\"rows\":30,\"cols\":100,\"cwd\":\"/tmp\",\"user\":\"1000:1000\"}\n"
    );
    assert_eq!(
        line(&(&Input::Signal(2)).into()),
        "{\"type\":\"signal\",\"signal\":2}\n"
    );
}

#[test]
fn frames_round_trip_through_the_reader() {
    let frames = [
        Frame::from(&Reply::Stdout(vec![0, 255, 10, 13])),
        Frame::from(&Reply::Exit(255)),
        Frame::from(&Request::Identity(IdentityRequest {
            hostname: "web-2".into(),
            machine_id: String::new(),
            nics: vec![Nic {
                name: "eth0".into(),
                mac: "02:00:00:00:00:01".into(),
                address: Some("10.0.0.2/24".into()),
                gateway: Some("10.0.0.1".into()),
                dns: vec!["1.1.1.1".into()],
            }],
        })),
    ];
    let wire: Vec<u8> = frames.iter().flat_map(encode).collect();
    let back: Vec<Frame> = read_all(&wire).into_iter().map(Result::unwrap).collect();
    assert_eq!(back, frames);
}

#[test]
fn reader_is_bounded_and_scanner_like() {
    // A last line without a newline counts, a trailing \r goes.
    let got = read_all(b"{\"type\":\"exit\"}\r\n{\"type\":\"stdout\"}");
    assert_eq!(got.len(), 2);
    assert_eq!(got[1].as_ref().unwrap().kind, "stdout");
    // An endless line fails at the bound, without a newline ever coming.
    let long = vec![b'a'; MAX_LINE + 10];
    let got = read_all(&long);
    assert!(
        got[0].as_ref().unwrap_err().contains("does not fit"),
        "{got:?}"
    );
    // The longest line that fits is read.
    let mut fits = b"{\"type\":\"error\",\"message\":\"".to_vec();
    fits.resize(MAX_LINE - 3, b'x');
    fits.extend_from_slice(b"\"}\n");
    assert_eq!(fits.len(), MAX_LINE);
    assert!(read_all(&fits)[0].is_ok());
    // Garbage and bad base64 are decode errors; an empty line is one too, as in Go.
    assert!(
        read_all(b"{nope\n")[0]
            .as_ref()
            .unwrap_err()
            .starts_with("decode frame")
    );
    assert!(read_all(b"{\"type\":\"stdout\",\"data\":\"!!\"}\n")[0].is_err());
    assert!(read_all(b"\n")[0].is_err());
    // null is a zero value, as Go decodes it.
    let got = read_all(b"{\"type\":\"exec\",\"argv\":null,\"data\":null,\"env\":null}\n");
    assert_eq!(got[0].as_ref().unwrap().kind, "exec");
}

#[test]
fn requests_are_validated() {
    let parse = |json: &str| Request::try_from(serde_json::from_str::<Frame>(json).unwrap());
    assert_eq!(parse("{\"type\":\"exec\"}"), Err(Invalid::EmptyArgv));
    assert_eq!(
        parse("{\"type\":\"stdin\"}").unwrap_err().to_string(),
        "expected first frame type \"exec\" or \"reseed\", got \"stdin\""
    );
    assert!(parse("{\"type\":\"exec\",\"argv\":[\"a\"],\"env\":{\"A=B\":\"1\"}}").is_err());
    assert!(parse("{\"type\":\"exec\",\"argv\":[\"a\\u0000b\"]}").is_err());
    let Ok(Request::Exec(e)) = parse("{\"type\":\"exec\",\"argv\":[\"a\"],\"tty\":true}") else {
        panic!()
    };
    assert_eq!(e.tty, Some(WinSize { rows: 24, cols: 80 }));
    assert!(parse("{\"type\":\"identity\",\"hostname\":\"-bad\"}").is_err());
    assert!(parse("{\"type\":\"identity\",\"machine_id\":\"ABC\"}").is_err());
    let bad_nic = "{\"type\":\"identity\",\"nics\":[{\"name\":\"eth0\",\"mac\":\"zz\"}]}";
    assert!(parse(bad_nic).is_err());
    let nic = "{\"type\":\"identity\",\"nics\":[{\"name\":\"eth0\",\"mac\":\"02:00:00:00:00:01\",\"address\":\"10.1.2.3/16\"}]}";
    assert!(parse(nic).is_ok());
}

#[test]
fn replies_are_strict() {
    let parse = |json: &str| Reply::try_from(serde_json::from_str::<Frame>(json).unwrap());
    assert_eq!(parse("{\"type\":\"exit\"}"), Ok(Reply::Exit(0)));
    assert_eq!(
        parse("{\"type\":\"exit\",\"exit_code\":-1}"),
        Ok(Reply::Exit(-1))
    );
    assert!(parse("{\"type\":\"exit\",\"exit_code\":4294967296}").is_err());
    assert!(parse("{\"type\":\"exit\",\"exit_code\":256}").is_err());
    assert_eq!(
        parse("{\"type\":\"stdshout\",\"data\":\"\"}")
            .unwrap_err()
            .to_string(),
        "unexpected frame type \"stdshout\" from the agent"
    );
}

#[test]
fn helpers_parse_what_they_should() {
    assert_eq!(parse_mac("02:0a:FF:00:00:01"), Some([2, 10, 255, 0, 0, 1]));
    assert_eq!(parse_mac("02:0a:ff:00:00"), None);
    assert_eq!(parse_mac("02:0a:ff:00:00:01:02"), None);
    assert_eq!(
        parse_cidr("10.0.0.2/24"),
        Some(("10.0.0.2".parse().unwrap(), 24))
    );
    assert_eq!(parse_cidr("10.0.0.2/33"), None);
    assert!(valid_hostname("a-b.c1"));
    assert!(!valid_hostname(&"a".repeat(65)));
    assert!(valid_machine_id(&"0f".repeat(16)));
    assert!(valid_signal(9) && !valid_signal(0) && !valid_signal(65));
}
