//! Structured fuzzing of every parser that reads what a peer sent (issue 10): WebSocket client
//! frames, REST bodies and query strings, link frames before and after `Hello`, and the
//! store's tuple keys and values. Each property feeds arbitrary input and near-valid input
//! (valid shapes with wrong types, huge or missing fields) and asserts the parser answers
//! with a clear error or a value, never a panic, and never allocates past its limit.
//!
//! CI runs `PROPTEST_CASES` cases each (proptest's default, 256); longer runs:
//! `PROPTEST_CASES=100000 cargo test -p chat-proptests --test peer_input --release`.

use chat_link::frame::{CodecError, HELLO_BYTES_MAX, read_frame, read_frame_within};
use chat_proto::ErrorCode;
use chat_proto::frame::ClientFrame;
use chat_proto::limits::BODY_BYTES_MAX;
use chat_proto::rest::{CreateConversation, Credentials, HistoryQuery, InboxQuery};
use chat_store::keys::{Key, value};
use proptest::prelude::*;
use serde_json::{Value, json};

/// JSON values of any shape, small.
fn any_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>().prop_map(|f| json!(f)),
        ".{0,40}".prop_map(Value::from),
    ];
    leaf.prop_recursive(3, 32, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::from),
            prop::collection::hash_map(".{0,8}", inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// Client frames that are nearly right: a known `type` with fields of any shape.
fn near_frames() -> impl Strategy<Value = String> {
    let types = prop_oneof![
        Just("send"),
        Just("read"),
        Just("sync"),
        Just("ping"),
        Just("shout"),
    ];
    let body = prop_oneof![
        ".{0,20}".prop_map(Value::from),
        (0..2 * BODY_BYTES_MAX).prop_map(|n| Value::from("\u{1}".repeat(n))),
        any_json(),
    ];
    (types, any_json(), body, any_json(), any_json()).prop_map(|(t, id, body, conv, seq)| {
        json!({"type": t, "id": id, "body": body, "conv": conv, "seq": seq, "after": seq})
            .to_string()
    })
}

proptest! {
    #[test]
    fn client_frames_parse_or_fail_clearly(text in prop_oneof![".{0,200}", near_frames()]) {
        match ClientFrame::parse(&text) {
            Ok(ClientFrame::Send { id, body, .. }) => {
                prop_assert!(!body.is_empty() && body.len() <= BODY_BYTES_MAX);
                prop_assert!(!id.is_empty() && id.len() <= 64);
            }
            Ok(_) => {}
            Err(err) => {
                prop_assert!(matches!(err.code, ErrorCode::BadFrame | ErrorCode::BodyTooLarge));
                prop_assert!(!err.message.is_empty());
            }
        }
    }

    #[test]
    fn rest_bodies_parse_or_fail(bytes in prop_oneof![
        prop::collection::vec(any::<u8>(), 0..300),
        any_json().prop_map(|v| v.to_string().into_bytes()),
        any_json().prop_map(|v| json!({"username": v.clone(), "password": v,
                                       "members": [v], "title": "t"}).to_string().into_bytes()),
    ]) {
        let _ = serde_json::from_slice::<Credentials>(&bytes);
        let _ = serde_json::from_slice::<CreateConversation>(&bytes);
    }

    #[test]
    fn query_strings_parse_or_fail(query in prop_oneof![
        "[ -~]{0,80}",
        (any::<i64>(), ".{0,10}").prop_map(|(n, s)| format!("limit={n}&before={s}")),
    ]) {
        let uri: axum::http::Uri = match format!("/x?{query}").parse() {
            Ok(uri) => uri,
            Err(_) => return Ok(()),
        };
        let _ = axum::extract::Query::<HistoryQuery>::try_from_uri(&uri);
        let _ = axum::extract::Query::<InboxQuery>::try_from_uri(&uri);
    }

    /// Link frames: any length prefix and bytes; a length over the limit is refused before
    /// anything is allocated (the limit before `Hello` is 1 KiB).
    #[test]
    fn link_frames_parse_or_fail_within_their_limit(
        len in prop_oneof![0u32..64, any::<u32>()],
        body in prop_oneof![
            prop::collection::vec(any::<u8>(), 0..128),
            any_json().prop_map(|v| json!({"t": "request", "id": 1, "request": v})
                .to_string().into_bytes()),
            any_json().prop_map(|v| json!({"t": "hello", "version": 2, "peer": v, "nonce": v})
                .to_string().into_bytes()),
        ],
    ) {
        let framed = |len: u32| {
            let mut bytes = len.to_be_bytes().to_vec();
            bytes.extend_from_slice(&body);
            bytes
        };
        let runtime = tokio::runtime::Builder::new_current_thread().build().expect("runtime");
        runtime.block_on(async {
            for bytes in [framed(len), framed(body.len() as u32)] {
                match read_frame_within(&mut &bytes[..], HELLO_BYTES_MAX).await {
                    Err(CodecError::TooLarge(n)) => assert!(n > HELLO_BYTES_MAX),
                    Ok(_) | Err(CodecError::Io(_)) | Err(CodecError::Malformed(_)) => {}
                }
                let _ = read_frame(&mut &bytes[..]).await;
            }
        });
    }

    /// The store's keys and values, as read back from a disk that may hold anything.
    #[test]
    fn store_keys_and_values_decode_or_are_corrupt(
        bytes in prop_oneof![
            prop::collection::vec(any::<u8>(), 0..64),
            (prop::sample::select(&chat_store::keys::subspace::ALL[..]),
             prop::collection::vec(any::<u8>(), 0..48)).prop_map(|(subspace, rest)| {
                // A real subspace (a tuple string: 0x02, the name, 0x00), then noise.
                let mut key = vec![0x02];
                key.extend_from_slice(subspace.as_bytes());
                key.push(0x00);
                key.extend(rest);
                key
            }),
        ],
    ) {
        if let Ok(key) = Key::decode(&bytes) {
            prop_assert_eq!(Key::decode(&key.encode()).ok(), Some(key));
        }
        let _ = value::decode_user(&bytes);
        let _ = value::decode_conv(1, &bytes);
        let _ = value::decode_head(&bytes);
        let _ = value::decode_msg(1, 1, &bytes);
        let _ = value::decode_idem(&bytes);
        let _ = value::decode_int("counter", &bytes);
    }

    /// `X-Forwarded-For` from a trusted proxy: whatever the header holds, the client found is
    /// the proxy itself or an address the header names, never anything else, never a panic.
    #[test]
    fn forwarded_for_names_the_proxy_or_a_listed_address(
        values in prop::collection::vec(prop_oneof![
            "[0-9a-f.:, ]{0,80}",
            prop::collection::vec(
                prop_oneof![
                    any::<std::net::Ipv4Addr>().prop_map(|ip| ip.to_string()),
                    any::<std::net::Ipv6Addr>().prop_map(|ip| ip.to_string()),
                    Just("10.0.0.9".to_owned()),
                    Just("junk".to_owned()),
                ],
                0..20,
            ).prop_map(|hops| hops.join(", ")),
        ], 0..4),
    ) {
        let trusted: chat_net::proxy::TrustedProxies = "10.0.0.0/8".parse().expect("ranges");
        let proxy: std::net::IpAddr = "10.0.0.1".parse().expect("ip");
        let mut headers = axum::http::HeaderMap::new();
        for v in &values {
            if let Ok(v) = axum::http::HeaderValue::from_str(v) {
                headers.append("x-forwarded-for", v);
            }
        }
        let client = trusted.client(proxy, &headers);
        let listed = values
            .iter()
            .flat_map(|v| v.split(','))
            .filter_map(|hop| hop.trim().parse::<std::net::IpAddr>().ok())
            .any(|ip| ip == client);
        prop_assert!(client == proxy || listed, "{client} from {values:?}");
    }
}
