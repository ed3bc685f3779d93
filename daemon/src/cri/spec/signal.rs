//! The signal that stops a CRI container.

use berth_api::runtime::v1 as cri;

use super::{container_name, SpecError};
use crate::tasks::spec::ContainerConfig as ImageConfig;

const SIGRTMIN: i32 = 34;
const SIGRTMAX: i32 = 64;

/// Signal name or number ("SIGTERM", "TERM", "term", "15", "SIGRTMIN+3",
/// "SIGRTMAX-1", and the CRI enum's "SIGRTMINPLUS3"/"SIGRTMAXMINUS1")
/// -> its Linux number.
pub fn parse_signal(s: &str) -> Option<i32> {
    let s = s.trim();
    if let Ok(n) = s.parse::<i32>() {
        return (1..=SIGRTMAX).contains(&n).then_some(n);
    }
    let up = s.to_ascii_uppercase();
    let name = up.strip_prefix("SIG").unwrap_or(&up);
    let rt = |base: i32, rest: &str| -> Option<i32> {
        let n = if rest.is_empty() {
            base
        } else if let Some(k) = rest.strip_prefix('+').or_else(|| rest.strip_prefix("PLUS")) {
            base + k.parse::<i32>().ok()?
        } else if let Some(k) = rest
            .strip_prefix('-')
            .or_else(|| rest.strip_prefix("MINUS"))
        {
            base - k.parse::<i32>().ok()?
        } else {
            return None;
        };
        (SIGRTMIN..=SIGRTMAX).contains(&n).then_some(n)
    };
    if let Some(rest) = name.strip_prefix("RTMIN") {
        return rt(SIGRTMIN, rest);
    }
    if let Some(rest) = name.strip_prefix("RTMAX") {
        return rt(SIGRTMAX, rest);
    }
    let n = match name {
        "HUP" => 1,
        "INT" => 2,
        "QUIT" => 3,
        "ILL" => 4,
        "TRAP" => 5,
        "ABRT" | "IOT" => 6,
        "BUS" => 7,
        "FPE" => 8,
        "KILL" => 9,
        "USR1" => 10,
        "SEGV" => 11,
        "USR2" => 12,
        "PIPE" => 13,
        "ALRM" => 14,
        "TERM" => 15,
        "STKFLT" => 16,
        "CHLD" | "CLD" => 17,
        "CONT" => 18,
        "STOP" => 19,
        "TSTP" => 20,
        "TTIN" => 21,
        "TTOU" => 22,
        "URG" => 23,
        "XCPU" => 24,
        "XFSZ" => 25,
        "VTALRM" => 26,
        "PROF" => 27,
        "WINCH" => 28,
        "IO" | "POLL" => 29,
        "PWR" => 30,
        "SYS" => 31,
        _ => return None,
    };
    Some(n)
}

/// The signal that stops the container: the CRI config's stop_signal, else
/// the image's StopSignal, else SIGTERM.
pub fn stop_signal(cfg: &cri::ContainerConfig, image: &ImageConfig) -> Result<i32, SpecError> {
    let name = container_name(cfg, "");
    match cri::Signal::try_from(cfg.stop_signal) {
        Ok(cri::Signal::RuntimeDefault) => {}
        Ok(sig) => {
            return parse_signal(sig.as_str_name()).ok_or_else(|| {
                SpecError::InvalidArgument(format!(
                    "container {name:?}: stop_signal {} is not a Linux signal",
                    sig.as_str_name()
                ))
            })
        }
        Err(_) => {
            return Err(SpecError::InvalidArgument(format!(
                "container {name:?}: stop_signal {} is not a known signal",
                cfg.stop_signal
            )))
        }
    }
    match image.stop_signal.as_deref().map(str::trim) {
        None | Some("") => Ok(15),
        Some(s) => parse_signal(s).ok_or_else(|| {
            SpecError::InvalidArgument(format!(
                "container {name:?}: the image's StopSignal {s:?} is not a signal"
            ))
        }),
    }
}
