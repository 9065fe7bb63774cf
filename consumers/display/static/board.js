// A motcua wall board: draws the board from its event stream, keeps it live, and says how
// fresh it is. No inline script (the page's CSP forbids it), nothing from elsewhere.
(() => {
  "use strict";
  const body = document.body;
  const BOARD = body.dataset.board;
  const LANG = body.dataset.lang === "en" ? "en" : "vi";
  const RELOAD_H = parseFloat(body.dataset.reloadHours || "0");
  const OFFICE = JSON.parse(body.dataset.office || "[]"); // Monday first: [["07:30","11:30"], ...]
  const AMBER_S = parseFloat(body.dataset.amber || "30");
  const RED_S = parseFloat(body.dataset.red || "120");
  const SILENT_S = Math.min(20, AMBER_S); // no status for this long: the connection is dead

  const T = {
    vi: {
      today: "Hôm nay", day: "Ngày", total: "Tổng số", month: "Tháng", received: "Tiếp nhận",
      online: "Trực tuyến", in_person: "Trực tiếp", postal: "Bưu chính", full_online: "Toàn trình",
      online_rate: "Tỷ lệ trực tuyến", handled: "Đã giải quyết", early: "Trước hạn",
      on_time: "Đúng hạn", late: "Quá hạn", on_time_rate: "Tỷ lệ đúng hạn",
      in_progress: "Đang giải quyết", paused: "Tạm dừng", overdue: "Quá hạn",
      supplement: "Yêu cầu bổ sung", refused: "Từ chối", withdrawn: "Rút hồ sơ",
      digitised: "Số hóa thành phần · kết quả", hotline: "Tổng đài 1022 hôm nay",
      calls: "cuộc gọi", chart: "Hồ sơ tiếp nhận theo ngày", rank_on_time: "Tỷ lệ đúng hạn",
      rank_online: "Tỷ lệ trực tuyến", lowest: "thấp nhất", highest: "cao nhất", others: "xã, phường khác",
      ranking: "Xếp hạng xã, phường trong tháng",
      updated: (s) => `cập nhật ${s} trước`, asof: "số liệu đến",
      unreachable: "Không kết nối được máy chủ bảng",
      worker: "Bộ xử lý luồng không gửi số liệu", broker: "Máy chủ không đọc được Kafka",
      loading: "Đang tải số liệu…", live: "Trực tiếp", other_lang: "English",
      sec: "giây", min: "phút", hour: "giờ",
      cats: {procedure: "Thủ tục hành chính", dossier_status: "Tình trạng hồ sơ", land: "Đất đai",
             project_progress: "Tiến độ dự án", commune_police: "Công an xã",
             complaint: "Phản ánh, khiếu nại", other: "Khác"},
    },
    en: {
      today: "Today", day: "Day", total: "Total", month: "Month", received: "Received",
      online: "Online", in_person: "In person", postal: "Postal", full_online: "Fully online",
      online_rate: "Online rate", handled: "Handled", early: "Early", on_time: "On time",
      late: "Late", on_time_rate: "On-time rate", in_progress: "In progress",
      paused: "Paused", overdue: "Overdue", supplement: "Supplement requests",
      refused: "Refused", withdrawn: "Withdrawn", digitised: "Digitised components · results",
      hotline: "Hotline 1022 today", calls: "calls", chart: "Dossiers received per day",
      rank_on_time: "On-time rate", rank_online: "Online rate", lowest: "lowest",
      highest: "highest", others: "other communes", ranking: "Communes this month",
      updated: (s) => `updated ${s} ago`, asof: "figures as of",
      unreachable: "The board server is unreachable",
      worker: "The stream worker is not publishing", broker: "The server cannot read Kafka",
      loading: "Loading figures…", live: "Live", other_lang: "Tiếng Việt",
      sec: "s", min: "min", hour: "h",
      cats: {procedure: "Procedures", dossier_status: "Dossier status", land: "Land",
             project_progress: "Project progress", commune_police: "Commune police",
             complaint: "Complaints", other: "Other"},
    },
  }[LANG];
  const LOCALE = LANG === "vi" ? "vi-VN" : "en-GB";
  const NUM = new Intl.NumberFormat(LOCALE);
  const PCT = new Intl.NumberFormat(LOCALE, {minimumFractionDigits: 2, maximumFractionDigits: 2});
  const num = (v) => (v === null || v === undefined ? "–" : NUM.format(v));
  const pct = (v) => (v === null || v === undefined ? "–" : PCT.format(Number(v)) + "%");

  let data = null;      // the board, as last received
  let status = null;    // the server's last status
  let statusAt = 0;     // when it came (browser clock)
  let contactAt = 0;    // the last message of any kind
  let es = null, lastId = null, backoff = 1000, retrying = null;

  // --- drawing ------------------------------------------------------------------------
  function el(tag, cls, text) {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined) e.textContent = text;
    return e;
  }
  function svg(tag, attrs) {
    const e = document.createElementNS("http://www.w3.org/2000/svg", tag);
    for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
    return e;
  }
  function dmy(iso) { const [y, m, d] = iso.split("-"); return `${d}/${m}/${y}`; }
  function monthName(iso) { const [y, m] = iso.split("-"); return `${T.month} ${Number(m)}/${y}`; }
  function dayName(meta) { return meta.is_today ? T.today : `${T.day} ${dmy(meta.day)}`; }

  function pair(label, key, fmt, cls) {
    const row = el("div", "row " + (cls || ""));
    row.append(el("span", "label", label));
    for (const period of ["today", "month"]) {
      const v = el("span", "value " + period, (fmt || num)(data[period][key]));
      v.dataset.k = `${period}.${key}`;
      row.append(v);
    }
    return row;
  }
  function tile(title, cls) {
    const t = el("section", "tile " + (cls || ""));
    const h = el("header");
    h.append(el("h2", null, title));
    if (cls !== "wide") {
      const [, m, d] = data.meta.day.split("-");
      h.append(el("span", "col", data.meta.is_today ? T.today : `${d}/${m}`),
               el("span", "col", `${T.month} ${Number(m)}`));
    }
    t.append(h);
    return t;
  }
  function footer(t) { const f = el("footer", "fresh"); t.append(f); return t; }

  function render() {
    if (!data) return;
    const m = data.meta;
    const app = el("div", "board " + m.kind);
    const head = el("header", "top");
    const h1 = el("h1", null, m.title);
    const when = el("div", "when");
    const clock = el("span", "clock"); clock.id = "clock";
    when.append(el("span", "day", m.is_today ? `${T.today} · ${dmy(m.day)}` : dayName(m)), clock);
    const other = el("a", "lang", T.other_lang);
    other.href = `?lang=${LANG === "vi" ? "en" : "vi"}`;
    const state = el("div", "state"); state.id = "state";
    head.append(h1, when, state, other);
    app.append(head);

    const grid = el("main", "grid");
    let t = tile(T.received, "received");
    t.append(pair(T.total, "received", num, "big"), pair(T.online, "received.online"),
             pair(T.in_person, "received.in_person"), pair(T.postal, "received.postal"),
             pair(T.full_online, "received.full_online"),
             pair(T.online_rate, "online_rate", pct, "rate"));
    grid.append(footer(t));
    t = tile(T.handled, "handled");
    t.append(pair(T.total, "handled", num, "big"), pair(T.early, "handled.early"),
             pair(T.on_time, "handled.on_time"), pair(T.late, "handled.late"),
             pair(T.on_time_rate, "on_time_rate", pct, "rate"));
    grid.append(footer(t));
    t = tile(`${T.in_progress} · ${T.paused}`, "open");
    t.append(pair(T.in_progress, "in_progress", num, "big"), pair(T.paused, "paused"),
             pair(T.overdue, "overdue", num, "warn"), pair(T.supplement, "supplement_requests"),
             pair(T.refused, "refused"), pair(T.withdrawn, "withdrawn"));
    const dig = el("div", "row");
    dig.append(el("span", "label", T.digitised));
    for (const p of ["today", "month"]) {
      const v = el("span", "value " + p,
                   `${num(data[p]["digitised.components"])} · ${num(data[p]["digitised.results"])}`);
      v.dataset.k = `${p}.digitised`;
      dig.append(v);
    }
    t.append(dig);
    grid.append(footer(t));
    if (data.hotline) grid.append(footer(hotline()));
    grid.append(footer(chart()));
    if (data.ranking) grid.append(footer(ranking()));
    app.append(grid);
    document.getElementById("app").replaceChildren(app);
    freshness();
  }

  function hotline() {
    const t = el("section", "tile hotline");
    const h = el("header");
    h.append(el("h2", null, T.hotline));
    t.append(h);
    const total = el("div", "row big");
    total.append(el("span", "label", T.calls));
    const v = el("span", "value", num(data.hotline.total)); v.dataset.k = "hotline.total";
    total.append(v);
    t.append(total);
    for (const [cat, label] of Object.entries(T.cats)) {
      const row = el("div", "row");
      const c = el("span", "value", num(data.hotline[cat])); c.dataset.k = `hotline.${cat}`;
      row.append(el("span", "label", label), c);
      t.append(row);
    }
    return t;
  }

  function chart() {
    const t = el("section", "tile chart wide");
    const h = el("header");
    h.append(el("h2", null, `${T.chart} · ${monthName(data.meta.month)}`));
    const legend = el("div", "legend");
    for (const c of ["online", "in_person", "postal"]) legend.append(el("span", "key " + c, T[c]));
    h.append(legend);
    t.append(h);
    const ch = data.chart, n = ch.days.length, W = 1000, H = 260, pad = 30;
    const totals = ch.days.map((_, i) => (ch.online[i] || 0) + (ch.in_person[i] || 0) + (ch.postal[i] || 0));
    const max = Math.max(1, ...totals);
    const s = svg("svg", {viewBox: `0 0 ${W} ${H + pad}`, class: "bars", role: "img"});
    const bw = W / n;
    ch.days.forEach((d, i) => {
      let y = H;
      for (const c of ["online", "in_person", "postal"]) {
        const v = ch[c][i];
        if (!v) continue;
        const hgt = (v / max) * (H - 10);
        y -= hgt;
        s.append(svg("rect", {x: i * bw + 2, y, width: bw - 4, height: hgt, class: c}));
      }
      const label = svg("text", {x: i * bw + bw / 2, y: H + pad - 8, class: "tick"});
      label.textContent = String(Number(d.slice(8)));
      s.append(label);
      if (totals[i] && d === ch.until) {
        const top = svg("text", {x: i * bw + bw / 2, y: Math.max(14, y - 4), class: "total"});
        top.textContent = num(totals[i]);
        s.append(top);
      }
    });
    t.append(s);
    return t;
  }

  function ranking() {
    const t = el("section", "tile ranking wide");
    const h = el("header");
    h.append(el("h2", null, T.ranking));
    t.append(h);
    const cols = el("div", "cols");
    for (const [key, title] of [["on_time", T.rank_on_time], ["online", T.rank_online]]) {
      const r = data.ranking[key];
      const col = el("div", "col");
      col.append(el("h3", null, `${title}: ${r.lowest.length} ${T.lowest}`));
      const ol = el("ol", "lowest");
      r.lowest.forEach((row) => {
        const li = el("li", "low");
        li.append(el("span", "rank", String(row.rank)), el("span", "name", row.name),
                  el("span", "rate", pct(row.rate)));
        li.dataset.code = row.code;
        ol.append(li);
      });
      col.append(ol);
      col.append(el("h3", null, `${r.highest.length} ${T.highest}`));
      const top = el("ol", "highest");
      r.highest.forEach((row) => {
        const li = el("li");
        li.append(el("span", "name", row.name), el("span", "rate", pct(row.rate)));
        li.dataset.code = row.code;
        top.append(li);
      });
      col.append(top);
      cols.append(col);
    }
    t.append(cols);
    return t;
  }

  // --- freshness ------------------------------------------------------------------------
  function ago(seconds) {
    const s = Math.max(0, Math.round(seconds));
    if (s < 90) return `${s} ${T.sec}`;
    if (s < 5400) return `${Math.round(s / 60)} ${T.min}`;
    return `${Math.round(s / 3600)} ${T.hour}`;
  }
  function inOffice(ms) {
    const local = new Date(ms + 7 * 3600e3); // +07:00, read with the UTC getters
    const weekday = (local.getUTCDay() + 6) % 7; // Monday 0
    const hm = local.toISOString().slice(11, 16);
    return (OFFICE[weekday] || []).some(([a, b]) => a <= hm && hm < b);
  }
  function localClock(ms) {
    const local = new Date(ms + 7 * 3600e3);
    return local.toISOString().slice(11, 19);
  }
  // HH:MM:SS today (Vietnam's time), else with the date: a simulated July shows its day
  function localStamp(ms, now) {
    const day = (t) => new Date(t + 7 * 3600e3).toISOString().slice(0, 10);
    if (day(ms) === day(now)) return localClock(ms);
    const [y, m, d] = day(ms).split("-");
    return `${localClock(ms)} ${d}/${m}/${y}`;
  }
  function freshness() {
    const now = Date.now();
    const clock = document.getElementById("clock");
    if (clock) clock.textContent = localClock(now);
    const stateEl = document.getElementById("state");
    if (!stateEl || !data) return;
    let level = "ok", reason = "";
    const silent = contactAt ? (now - contactAt) / 1000 : Infinity;
    let age = null; // seconds since the server last read a counters record
    if (status && status.last_record_age_s !== null) age = status.last_record_age_s + (now - statusAt) / 1000;
    if (silent > AMBER_S) {
      level = silent > RED_S ? "red" : "amber";
      reason = T.unreachable;
      age = status && status.last_record_age_s !== null ? age : silent;
    } else if (status && !status.connected) {
      level = "amber"; reason = T.broker;
    } else if (status && !status.caught_up) {
      level = "amber"; reason = T.loading;
    } else if (age !== null && age > AMBER_S && inOffice(now)) {
      level = age > RED_S ? "red" : "amber"; reason = T.worker;
    }
    body.classList.toggle("amber", level === "amber");
    body.classList.toggle("red", level === "red");
    body.classList.toggle("stale", level !== "ok");
    stateEl.className = "state " + level;
    stateEl.dataset.level = level;
    const updated = age === null ? "" : T.updated(ago(age));
    stateEl.textContent = level === "ok" ? `● ${T.live} · ${updated}` : `▲ ${reason} · ${updated}`;
    // "as of": the event time of the newest event counted in this board's scope
    const asOf = data.meta.as_of ? new Date(data.meta.as_of).getTime() : null;
    const line = (level === "ok" ? "" : "⚠ ") + updated +
      (asOf ? ` · ${T.asof} ${localStamp(asOf, now)}` : "");
    for (const f of document.querySelectorAll("footer.fresh")) {
      f.textContent = line;
      f.dataset.level = level;
    }
  }

  // --- the stream, reconnected by itself ------------------------------------------------
  function contact() { contactAt = Date.now(); }
  function connect() {
    retrying = null;
    const q = new URLSearchParams({board: BOARD});
    if (lastId !== null) q.set("last", lastId);
    es = new EventSource("/events?" + q.toString());
    es.addEventListener("board", (e) => {
      lastId = e.lastEventId; data = JSON.parse(e.data); contact(); render();
    });
    es.addEventListener("change", (e) => {
      lastId = e.lastEventId;
      if (data) { Object.assign(data, JSON.parse(e.data)); render(); }
      contact();
    });
    es.addEventListener("status", (e) => {
      status = JSON.parse(e.data); statusAt = Date.now(); contact(); freshness();
    });
    es.onopen = () => { backoff = 1000; };
    // A plain EventSource retries a dropped connection by itself, but gives up for good
    // after an answer that is not 200 (a 5xx, a proxy's error page): start a new one.
    es.onerror = () => { if (es.readyState === EventSource.CLOSED) again(); };
  }
  function again() {
    if (retrying) return;
    if (es) es.close();
    retrying = setTimeout(connect, backoff + Math.random() * 500);
    backoff = Math.min(backoff * 2, 30000);
  }
  // a connection that stays open but goes silent (status comes every few seconds)
  setInterval(() => { if (contactAt && (Date.now() - contactAt) / 1000 > SILENT_S) again(); }, 5000);
  setInterval(freshness, 1000);
  if (RELOAD_H > 0) {
    // reload only while the server answers: a kiosk left on a browser error page is dark
    const check = () => {
      if (Date.now() - contactAt < 10000) location.reload();
      else setTimeout(check, 60000);
    };
    setTimeout(check, RELOAD_H * 3600e3);
  }
  connect();
})();
