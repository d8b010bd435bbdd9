//! The one part of a video a request asks for with `Range` (RFC 9110 §14), as browsers send it
//! when a `<video>` element seeks.
//!
//! One range is answered; a header the panel does not serve (another unit, several ranges, bad
//! syntax) is ignored and the whole video sent, as RFC 9110 allows.

use std::ops::Range;

use axum::http::HeaderValue;

/// What to send of a representation of `size` bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Requested {
    /// All of it, with 200.
    Whole,
    /// These bytes, with 206 and `Content-Range`; never empty.
    Part(Range<u64>),
    /// Nothing of it can be sent: 416 with `Content-Range: bytes */<size>`.
    Unsatisfiable,
}

/// What `range` (the request's `Range` header, if any) asks of `size` bytes.
pub(crate) fn requested(range: Option<&HeaderValue>, size: u64) -> Requested {
    let Some(spec) = range
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.trim().split_once('='))
        .filter(|(unit, _)| unit.trim().eq_ignore_ascii_case("bytes"))
        .map(|(_, spec)| spec.trim())
        .filter(|spec| !spec.contains(','))
    else {
        return Requested::Whole;
    };
    let Some((first, last)) = spec.split_once('-') else {
        return Requested::Whole;
    };
    let number = |text: &str| {
        (!text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()))
            .then(|| text.parse::<u64>().ok())
            .flatten()
    };
    match (first.trim(), last.trim()) {
        // `-n`: the last n bytes.
        ("", suffix) => match number(suffix) {
            None => Requested::Whole,
            Some(0) => Requested::Unsatisfiable,
            // An empty video has no last bytes to send, only its (empty) whole.
            Some(_) if size == 0 => Requested::Whole,
            Some(n) => Requested::Part(size - n.min(size)..size),
        },
        (first, last) => {
            let Some(first) = number(first) else {
                return Requested::Whole;
            };
            let end = match last {
                "" => size,
                last => match number(last) {
                    Some(last) if last >= first => last.saturating_add(1).min(size),
                    // Not a range at all (last before first, or not a number): ignored.
                    _ => return Requested::Whole,
                },
            };
            if first >= size {
                Requested::Unsatisfiable
            } else {
                Requested::Part(first..end)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn asked(range: &str, size: u64) -> Requested {
        requested(Some(&HeaderValue::from_str(range).unwrap()), size)
    }

    #[test]
    fn one_range_is_resolved_against_the_size() {
        assert_eq!(requested(None, 10), Requested::Whole);
        assert_eq!(asked("bytes=0-", 10), Requested::Part(0..10));
        assert_eq!(asked("bytes=2-5", 10), Requested::Part(2..6));
        assert_eq!(asked("bytes=9-9", 10), Requested::Part(9..10));
        // A last byte past the end stops at the end.
        assert_eq!(asked("bytes=4-1000", 10), Requested::Part(4..10));
        assert_eq!(
            asked("bytes=4-18446744073709551615", 10),
            Requested::Part(4..10)
        );
        assert_eq!(asked("bytes=-3", 10), Requested::Part(7..10));
        assert_eq!(asked("bytes=-30", 10), Requested::Part(0..10));
        assert_eq!(asked("Bytes = 1-2", 10), Requested::Part(1..3));
    }

    #[test]
    fn a_range_outside_the_video_cannot_be_satisfied() {
        assert_eq!(asked("bytes=10-", 10), Requested::Unsatisfiable);
        assert_eq!(asked("bytes=10-20", 10), Requested::Unsatisfiable);
        assert_eq!(asked("bytes=-0", 10), Requested::Unsatisfiable);
        assert_eq!(asked("bytes=0-", 0), Requested::Unsatisfiable);
        assert_eq!(asked("bytes=-5", 0), Requested::Whole);
    }

    #[test]
    fn what_is_not_one_byte_range_is_ignored() {
        for ignored in [
            "items=0-1",
            "bytes=0-1,4-5",
            "bytes=5-2",
            "bytes=a-b",
            "bytes=-",
            "bytes=1",
            "bytes=+1-2",
            "bytes=99999999999999999999-",
            "",
        ] {
            assert_eq!(asked(ignored, 10), Requested::Whole, "{ignored:?}");
        }
        let not_text = HeaderValue::from_bytes(b"bytes=\xff-").unwrap();
        assert_eq!(requested(Some(&not_text), 10), Requested::Whole);
    }
}
