//! Human-readable alert messages (SPEC §5), in `zh-CN` or `en`.
//!
//! A message is rendered from the transition alone (rule, state, subject,
//! location, evidence), so it is the same wherever the transition is shown.
//! Each message names the place and what the grid worker should do.

use crate::alert::{AlertTransition, Location, SubjectKind, TransitionState};
use crate::config::Language;

fn ev<'a>(t: &'a AlertTransition, key: &str) -> Option<&'a serde_json::Value> {
    t.evidence.get(key)
}

fn ev_str(t: &AlertTransition, key: &str) -> String {
    match ev(t, key) {
        Some(serde_json::Value::String(s)) => s.clone(),
        Some(serde_json::Value::Null) | None => String::new(),
        Some(v) => v.to_string(),
    }
}

/// `12号楼1单元502室` / `Building 12, Unit 1, Room 502`.
pub fn place(lang: Language, loc: &Location) -> String {
    let mut s = String::new();
    match lang {
        Language::ZhCn => {
            if let Some(b) = &loc.building {
                s.push_str(&format!("{b}号楼"));
            }
            if let Some(u) = &loc.unit {
                s.push_str(&format!("{u}单元"));
            }
            if let Some(r) = &loc.room {
                s.push_str(&format!("{r}室"));
            }
        }
        Language::En => {
            let mut parts = vec![];
            if let Some(b) = &loc.building {
                parts.push(format!("Building {b}"));
            }
            if let Some(u) = &loc.unit {
                parts.push(format!("Unit {u}"));
            }
            if let Some(r) = &loc.room {
                parts.push(format!("Room {r}"));
            }
            s = parts.join(", ");
        }
    }
    s
}

/// Human duration in the message language (`24小时`, `24 hours`).
fn span(lang: Language, humantime: &str) -> String {
    let (num, unit): (String, String) = humantime
        .chars()
        .partition(|c| c.is_ascii_digit() || *c == '.');
    let zh = |u: &str| match u {
        "d" => "天",
        "h" => "小时",
        "m" => "分钟",
        "s" => "秒",
        _ => "",
    };
    let en = |u: &str| match u {
        "d" => " days",
        "h" => " hours",
        "m" => " minutes",
        "s" => " seconds",
        _ => "",
    };
    match lang {
        Language::ZhCn if !zh(&unit).is_empty() => format!("{num}{}", zh(&unit)),
        Language::En if !en(&unit).is_empty() => format!("{num}{}", en(&unit)),
        _ => humantime.to_string(),
    }
}

pub fn render(lang: Language, t: &AlertTransition) -> String {
    let body = body(lang, t);
    match (lang, t.state) {
        (_, TransitionState::Raised) => body,
        (Language::ZhCn, TransitionState::Escalated) => {
            format!("【升级为{}】{body}", severity_zh(t.severity.as_str()))
        }
        (Language::En, TransitionState::Escalated) => {
            format!("[Escalated to {}] {body}", t.severity)
        }
        (Language::ZhCn, TransitionState::Cleared) => format!("【已解除】{}", cleared(lang, t)),
        (Language::En, TransitionState::Cleared) => format!("[Cleared] {}", cleared(lang, t)),
    }
}

fn severity_zh(s: &str) -> &'static str {
    match s {
        "critical" => "紧急",
        "high" => "高",
        "medium" => "中",
        _ => "低",
    }
}

fn who(lang: Language, t: &AlertTransition) -> String {
    let p = place(lang, &t.location);
    match (lang, t.subject.kind) {
        (Language::ZhCn, SubjectKind::Resident) if !p.is_empty() => {
            format!("{}（{p}）", t.subject.id)
        }
        (Language::En, SubjectKind::Resident) if !p.is_empty() => format!("{} ({p})", t.subject.id),
        _ => t.subject.id.clone(),
    }
}

fn device(t: &AlertTransition) -> String {
    let name = ev_str(t, "device_name");
    if name.is_empty() {
        t.location
            .device
            .clone()
            .unwrap_or_else(|| t.subject.id.clone())
    } else {
        name
    }
}

/// An elevator, by name, with its building and unit unless the name says
/// them already: `1号梯（3号楼1单元）`, `Lift 1 (Building 3, Unit 1)`.
fn lift(lang: Language, t: &AlertTransition) -> String {
    let dev = device(t);
    let p = place(lang, &t.location);
    match lang {
        _ if p.is_empty() || dev.contains(&p) => dev,
        Language::ZhCn => format!("{dev}（{p}）"),
        Language::En => format!("{dev} ({p})"),
    }
}

/// ` at floor 5` / `在5层`, when the floor is known.
fn at_floor(lang: Language, t: &AlertTransition) -> String {
    match (lang, ev_str(t, "floor")) {
        (_, f) if f.is_empty() => String::new(),
        (Language::ZhCn, f) => format!("在{f}层"),
        (Language::En, f) => format!(" at floor {f}"),
    }
}

/// `代码12` / `code 12`, or `故障位3` / `bit 3` for a fault of `fault_bits`.
fn fault_label(lang: Language, t: &AlertTransition) -> String {
    match (lang, ev_str(t, "fault_bit")) {
        (Language::ZhCn, b) if !b.is_empty() => format!("故障位{b}"),
        (Language::En, b) if !b.is_empty() => format!("bit {b}"),
        (Language::ZhCn, _) => format!("代码{}", ev_str(t, "fault_code")),
        (Language::En, _) => format!("code {}", ev_str(t, "fault_code")),
    }
}

/// `代码12：安全回路断开` / `code 12: safety circuit open`; just the label
/// when the fault table has no text (the evidence then has a generic one).
fn fault_desc(lang: Language, t: &AlertTransition) -> String {
    let label = fault_label(lang, t);
    let text = ev_str(t, "fault_text");
    let (code, bit) = (ev_str(t, "fault_code"), ev_str(t, "fault_bit"));
    let generic = [
        format!("fault code {code}"),
        format!("故障代码 {code}"),
        format!("fault bit {bit}"),
        format!("故障位 {bit}"),
    ];
    match lang {
        _ if text.is_empty() || generic.contains(&text) => label,
        Language::ZhCn => format!("{label}：{text}"),
        Language::En => format!("{label}: {text}"),
    }
}

fn mode_name(lang: Language, mode: &str) -> String {
    let (zh, en) = match mode {
        "normal" => ("正常", "normal"),
        "inspection" => ("检修", "inspection"),
        "out_of_service" => ("停用", "out-of-service"),
        "fire" => ("消防", "fire service"),
        "earthquake" => ("地震", "earthquake"),
        "power_backup" => ("应急电源", "backup power"),
        "other" => ("其他", "other"),
        m => (m, m),
    };
    match lang {
        Language::ZhCn => zh.to_string(),
        Language::En => en.to_string(),
    }
}

fn usage_name(lang: Language, condition: &str) -> String {
    let (zh, en) = match condition {
        "door_cycles" => ("短时间内反复开关门", "repeated door opening and closing"),
        "overspeed" => ("超速运行", "running above rated speed"),
        c => (c, c),
    };
    match lang {
        Language::ZhCn => zh.to_string(),
        Language::En => en.to_string(),
    }
}

fn cleared(lang: Language, t: &AlertTransition) -> String {
    let subject = match t.subject.kind {
        SubjectKind::Resident | SubjectKind::Household => who(lang, t),
        SubjectKind::Device => device(t),
        SubjectKind::Elevator => lift(lang, t),
        _ => t.subject.id.clone(),
    };
    let rule = rule_name(lang, &t.rule);
    // An elevator has one alert per fault code and per usage condition: say which.
    let detail = match t.rule.as_str() {
        "elevator_fault" => fault_label(lang, t),
        "elevator_abnormal_usage" => usage_name(lang, &ev_str(t, "condition")),
        _ => String::new(),
    };
    let rule = match (lang, detail.is_empty()) {
        (_, true) => rule.to_string(),
        (Language::ZhCn, false) => format!("{rule}（{detail}）"),
        (Language::En, false) => format!("{rule} ({detail})"),
    };
    let reason = ev_str(t, "cleared_by");
    match lang {
        Language::ZhCn => {
            let why = match reason.as_str() {
                "away" => "（已登记外出）",
                "roster" => "（住户已从名册移除）",
                _ => "",
            };
            format!("{subject}的“{rule}”告警已恢复正常{why}，无需处理")
        }
        Language::En => {
            let why = match reason.as_str() {
                "away" => " (absence registered)",
                "roster" => " (removed from the roster)",
                _ => "",
            };
            format!("{rule} for {subject} is back to normal{why}; no action needed")
        }
    }
}

pub fn rule_name(lang: Language, rule: &str) -> &'static str {
    let (zh, en) = match rule {
        "elderly_inactivity" => ("独居老人无活动", "elderly inactivity"),
        "not_returned" => ("外出未归", "not returned"),
        "group_rental" => ("疑似群租", "suspected group rental"),
        "card_sharing" => ("疑似借卡/尾随", "card sharing"),
        "repeat_stranger" => ("陌生人反复出现", "repeat stranger"),
        "denied_burst" => ("连续刷卡被拒", "denied burst"),
        "door_held_open" => ("门长时间未关", "door held open"),
        "door_forced" => ("门被强行打开", "door forced"),
        "elevator_trapped" => ("电梯困人", "elevator entrapment"),
        "elevator_door_open_moving" => ("电梯开门走车", "elevator moving with door open"),
        "elevator_overtravel" => ("电梯冲顶/蹲底", "elevator overtravel"),
        "elevator_stopped_outside_zone" => ("电梯非平层停梯", "elevator stopped outside door zone"),
        "elevator_fault" => ("电梯故障", "elevator fault"),
        "elevator_out_of_service" => ("电梯停用", "elevator out of service"),
        "elevator_abnormal_usage" => ("电梯异常使用", "elevator abnormal usage"),
        "device_offline" => ("设备离线", "device offline"),
        "gateway_health" => ("网关异常", "gateway health"),
        _ => ("告警", "alert"),
    };
    match lang {
        Language::ZhCn => zh,
        Language::En => en,
    }
}

fn body(lang: Language, t: &AlertTransition) -> String {
    let zh = lang == Language::ZhCn;
    let p = place(lang, &t.location);
    let threshold = span(lang, &ev_str(t, "threshold"));
    let dev = device(t);
    match t.rule.as_str() {
        "elderly_inactivity" if zh => format!("独居老人 {}已{threshold}无门禁记录，请网格员上门查看", who(lang, t)),
        "elderly_inactivity" => format!(
            "Resident {} living alone has had no door access for {threshold}; grid worker please visit",
            who(lang, t)
        ),
        "not_returned" if zh => format!("独居老人 {}外出已{threshold}未归，请网格员联系家属确认", who(lang, t)),
        "not_returned" => format!(
            "Resident {} went out {threshold} ago and has not returned; grid worker please contact the family",
            who(lang, t)
        ),
        "group_rental" if zh => format!(
            "{p}疑似群租：近{}天内{}天日通行超过{}次，使用凭证{}个，请网格员核查",
            ev_str(t, "window_days"),
            ev_str(t, "days_over"),
            ev_str(t, "max_daily"),
            ev_str(t, "distinct_credentials")
        ),
        "group_rental" => format!(
            "Suspected group rental at {p}: {} of the last {} days over {} entries, {} credentials used; grid worker please inspect",
            ev_str(t, "days_over"),
            ev_str(t, "window_days"),
            ev_str(t, "max_daily"),
            ev_str(t, "distinct_credentials")
        ),
        "card_sharing" if zh => format!("{}在{}疑似借卡或尾随进入，请网格员核实身份", who(lang, t), dev),
        "card_sharing" => format!(
            "Possible card sharing or tailgating by {} at {}; grid worker please verify identity",
            who(lang, t),
            dev
        ),
        "repeat_stranger" if zh => format!(
            "未登记人员 {} 已连续{}天在{}出现，请网格员核实身份",
            t.subject.id,
            ev_str(t, "days"),
            dev
        ),
        "repeat_stranger" => format!(
            "Unregistered person {} seen on {} consecutive days at {}; grid worker please verify identity",
            t.subject.id,
            ev_str(t, "days"),
            dev
        ),
        "denied_burst" if zh => format!(
            "{}在{}内连续{}次刷卡被拒，请网格员到场查看",
            dev,
            span(lang, &ev_str(t, "window")),
            ev_str(t, "count")
        ),
        "denied_burst" => format!(
            "{} denied accesses within {} at {}; grid worker please check on site",
            ev_str(t, "count"),
            span(lang, &ev_str(t, "window")),
            dev
        ),
        "door_held_open" if zh => format!("{dev}已持续打开超过{threshold}，请网格员到场关门"),
        "door_held_open" => format!("{dev} has been open for more than {threshold}; grid worker please close it"),
        "door_forced" if zh => format!("{dev}被强行打开，请网格员立即到场查看"),
        "door_forced" => format!("{dev} was forced open; grid worker please go there now"),
        "elevator_trapped" if zh && ev_str(t, "trigger") == "alarm_button" => format!(
            "{}{}紧急呼叫按钮被按下，疑似困人，请立即联系维保单位并到场救援",
            lift(lang, t),
            at_floor(lang, t)
        ),
        "elevator_trapped" if zh => format!(
            "{}{}疑似困人，请立即联系维保单位并到场救援",
            lift(lang, t),
            at_floor(lang, t)
        ),
        "elevator_trapped" if ev_str(t, "trigger") == "alarm_button" => format!(
            "Alarm button pressed in {}{}: passenger possibly trapped; call the maintenance company and go there now",
            lift(lang, t),
            at_floor(lang, t)
        ),
        "elevator_trapped" => format!(
            "Passenger possibly trapped in {}{}; call the maintenance company and go there now",
            lift(lang, t),
            at_floor(lang, t)
        ),
        "elevator_door_open_moving" if zh => format!("{}开门运行，请立即停用并通知维保单位", lift(lang, t)),
        "elevator_door_open_moving" => format!(
            "{} moved with its door open; take it out of service and call maintenance now",
            lift(lang, t)
        ),
        "elevator_overtravel" if zh => format!("{}冲顶或蹲底（{}层），请立即通知维保单位", lift(lang, t), ev_str(t, "floor")),
        "elevator_overtravel" => format!(
            "{} overtravelled (floor {}); call the maintenance company now",
            lift(lang, t),
            ev_str(t, "floor")
        ),
        "elevator_stopped_outside_zone" if zh => format!("{}{}停在非平层位置，请通知维保单位检查", lift(lang, t), at_floor(lang, t)),
        "elevator_stopped_outside_zone" => {
            format!("{}{} stopped outside the door zone; ask maintenance to check it", lift(lang, t), at_floor(lang, t))
        }
        "elevator_fault" if zh => format!("{}故障（{}），请通知维保单位", lift(lang, t), fault_desc(lang, t)),
        "elevator_fault" => format!(
            "{} fault ({}); notify the maintenance company",
            lift(lang, t),
            fault_desc(lang, t)
        ),
        "elevator_out_of_service" if zh => format!("{}处于{}模式，请确认原因并告知住户", lift(lang, t), mode_name(lang, &ev_str(t, "mode"))),
        "elevator_out_of_service" => format!(
            "{} is in {} mode; confirm why and inform residents",
            lift(lang, t),
            mode_name(lang, &ev_str(t, "mode"))
        ),
        "elevator_abnormal_usage" if zh => format!("{}使用异常（{}），请网格员查看", lift(lang, t), usage_name(lang, &ev_str(t, "condition"))),
        "elevator_abnormal_usage" => format!("{} abnormal usage ({}); grid worker please check", lift(lang, t), usage_name(lang, &ev_str(t, "condition"))),
        "device_offline" if zh && !p.is_empty() => format!("{dev}已离线（{p}），请通知物业检查设备"),
        "device_offline" if zh => format!("{dev}已离线，请通知物业检查设备"),
        "device_offline" if !p.is_empty() => format!("{dev} is offline ({p}); ask property management to check it"),
        "device_offline" => format!("{dev} is offline; ask property management to check it"),
        "gateway_health" if zh => format!("网关异常：{}，请通知物业运维", ev_str(t, "condition")),
        "gateway_health" => format!("Gateway problem: {}; notify property IT", ev_str(t, "condition")),
        other => format!("{other}: {}", t.subject.id),
    }
}
