// The Models view: reads /mlwp/api with the Airflow session (the UI's cookie) and renders
// projects, models, versions, serving state and history; the actions post to the same API,
// which decides who may act (the page only mirrors that decision to disable buttons).
(function () {
  "use strict";
  // Relative to this page (<base>/mlwp/models), so a base path in front of Airflow works.
  var API = location.pathname.replace(/\/models\/?$/, "") + "/api";
  var current = null;

  function el(tag, attrs, children) {
    var node = document.createElement(tag);
    Object.keys(attrs || {}).forEach(function (key) {
      var value = attrs[key];
      if (value === null || value === undefined || value === false) return;
      if (key === "text") node.textContent = value;
      else if (key === "onclick") node.addEventListener("click", value);
      else node.setAttribute(key, value === true ? "" : value);
    });
    (children || []).forEach(function (child) {
      if (child === null || child === undefined) return;
      node.appendChild(typeof child === "string" ? document.createTextNode(child) : child);
    });
    return node;
  }

  function show(kind, text) {
    var box = document.getElementById("message");
    box.className = "message " + kind;
    box.textContent = text;
    box.hidden = !text;
  }

  function request(method, path, body) {
    return fetch(API + path, {
      method: method,
      credentials: "same-origin",
      headers: body ? { "Content-Type": "application/json" } : {},
      body: body ? JSON.stringify(body) : undefined,
    }).then(function (response) {
      return response.json().catch(function () { return {}; }).then(function (data) {
        if (!response.ok) {
          var detail = data.detail;
          if (Array.isArray(detail)) {
            detail = detail.map(function (d) { return (d.loc || []).join(".") + ": " + d.msg; }).join("; ");
          }
          throw new Error(detail || ("HTTP " + response.status));
        }
        return data;
      });
    });
  }

  function traffic(split) {
    return Object.keys(split || {}).map(function (alias) { return alias + " " + split[alias] + "%"; }).join(", ");
  }

  function bar(split) {
    return el("div", { class: "bar", title: traffic(split) }, Object.keys(split || {}).map(function (alias) {
      return el("span", { class: alias, style: "width:" + split[alias] + "%" });
    }));
  }

  function badge(alias) { return el("span", { class: "badge " + alias, text: alias }); }

  function loadList() {
    return request("GET", "/models").then(function (data) {
      var nav = document.getElementById("projects");
      nav.replaceChildren();
      if (!data.projects.length) nav.appendChild(el("p", { class: "muted", text: "No registered model yet." }));
      data.projects.forEach(function (project) {
        nav.appendChild(el("div", { class: "project card" }, [
          el("h2", { text: project.project || "(no project)" }),
        ].concat(project.models.map(function (model) {
          return el("button", {
            class: "model-link", "data-model": model.name,
            "aria-current": current === model.name ? "true" : null,
            onclick: function () { select(model.name); },
          }, [el("strong", { text: model.name }), el("br"),
            el("span", { class: "muted", text: Object.keys(model.aliases).sort().map(function (a) {
              return a + " v" + model.aliases[a];
            }).join(" · ") || "no alias" })]);
        }))));
      });
      var wanted = new URLSearchParams(location.hash.slice(1)).get("model");
      var first = data.projects.length && data.projects[0].models[0];
      if (!current && (wanted || first)) select(wanted || first.name);
    }).catch(function (error) { show("error", error.message); });
  }

  function select(name) {
    current = name;
    history.replaceState(null, "", "#model=" + encodeURIComponent(name));
    document.querySelectorAll(".model-link").forEach(function (b) {
      b.setAttribute("aria-current", b.dataset.model === name ? "true" : "false");
    });
    return loadDetail(name);
  }

  function act(model, action, body, done) {
    show("", "");
    return request("POST", "/projects/" + encodeURIComponent(model.project) + "/models/" +
      encodeURIComponent(model.name) + "/" + action, body).then(function (after) {
      var serving = after.serving || {};
      // a change that changes nothing is recorded nowhere: say so rather than "Serving: ..."
      if (after.unchanged) {
        show("info", "unchanged: " + model.name + " already has aliases " +
          JSON.stringify(after.aliases) + ", traffic " + traffic(after.traffic));
        return Promise.all([loadList(), loadDetail(model.name)]);
      }
      show("info", model.name + ": aliases " + JSON.stringify(after.aliases) + ", traffic " +
        traffic(after.traffic) + ". Serving: " + (serving.message || serving.state || "not asked"));
      return Promise.all([loadList(), loadDetail(model.name)]);
    }).catch(function (error) { show("error", error.message); }).then(done);
  }

  function reasonOf() {
    var input = document.getElementById("reason");
    return input && input.value.trim() ? input.value.trim() : null;
  }

  function servingCard(model) {
    var serving = model.serving || {};
    var children = [el("h3", { text: "What serving has loaded" })];
    if (serving.error) children.push(el("p", { class: "bad", text: serving.error }));
    if (serving.missing) children.push(el("p", { class: "bad", text: "not served: " + serving.missing }));
    var entry = serving.model;
    if (entry) {
      children.push(el("table", { id: "serving" }, [
        el("tr", {}, [el("th", { text: "variant" }), el("th", { text: "version" }), el("th", { text: "loaded" })]),
      ].concat(entry.variants.map(function (v) {
        return el("tr", { "data-alias": v.alias }, [el("td", {}, [badge(v.alias)]),
          el("td", { class: "served-version", text: "v" + v.version }), el("td", { text: v.loaded_at || "" })]);
      }))));
      children.push(el("p", {}, ["Effective traffic: ", el("span", { id: "serving-traffic", text: traffic(entry.effective_traffic) })]));
      (entry.load_errors || []).forEach(function (e) {
        children.push(el("p", { class: "bad", text: "load error: " + JSON.stringify(e) }));
      });
    } else if (!serving.error && !serving.missing) {
      children.push(el("p", { class: "muted", text: "Serving does not serve this model." }));
    }
    if (serving.last_sync) children.push(el("p", { class: "muted", text: "last sync " + serving.last_sync }));
    return el("div", { class: "card" }, children);
  }

  function actionsCard(model) {
    var disabled = !model.can_change;
    var champion = el("input", { type: "number", min: "0", max: "100", id: "traffic-champion",
      value: String((model.traffic || {}).champion || 0), disabled: disabled });
    var challenger = el("input", { type: "number", min: "0", max: "100", id: "traffic-challenger",
      value: String((model.traffic || {}).challenger || 0), disabled: disabled });
    var children = [
      el("h3", { text: "Actions" }),
      disabled ? el("p", { class: "warn", id: "refusal", text: model.refusal || "You may not change this model." }) : null,
      el("div", { class: "row" }, [el("label", { for: "reason", text: "Reason" }),
        el("input", { id: "reason", size: "40", placeholder: "recorded in the audit trail", disabled: disabled })]),
      el("div", { class: "row", style: "margin-top:8px" }, [
        el("span", { text: "Traffic: champion" }), champion, el("span", { text: "challenger" }), challenger,
        el("button", { class: "action", id: "set-traffic", disabled: disabled, onclick: function (event) {
          event.target.disabled = true;
          act(model, "traffic", { traffic: { champion: Number(champion.value), challenger: Number(challenger.value) },
            reason: reasonOf() }, function () { event.target.disabled = false; });
        } }, ["Set traffic"]),
        el("button", { class: "action secondary", id: "rollback", disabled: disabled, onclick: function (event) {
          event.target.disabled = true;
          act(model, "rollback", { reason: reasonOf() }, function () { event.target.disabled = false; });
        } }, ["Roll back last promotion"]),
      ]),
    ];
    return el("div", { class: "card" }, children);
  }

  function lineage(v) {
    var l = v.lineage || {};
    var parts = [];
    if (l.dag_id && l.airflow_run_id) {
      parts.push(el("a", { href: "/dags/" + encodeURIComponent(l.dag_id) + "/runs/" + encodeURIComponent(l.airflow_run_id),
        target: "_top", text: l.dag_id + " · " + l.airflow_run_id }));
    }
    if (l.dataset_sha256) parts.push(el("div", { class: "muted", text: "dataset " + l.dataset_sha256.slice(0, 12) }));
    if (l.gx_success !== null && l.gx_success !== undefined) {
      parts.push(el("div", { class: l.gx_success ? "ok" : "bad", text: "GX " + (l.gx_success ? "passed" : "failed") }));
    }
    if (l.backend) parts.push(el("div", { class: "muted", text: "backend " + l.backend + (l.code_version ? " · code " + l.code_version.slice(0, 12) : "") }));
    return parts;
  }

  function versionsCard(model) {
    var rows = model.versions.map(function (v) {
      var metrics = v.test_metrics || {};
      var isChampion = (v.aliases || []).indexOf("champion") >= 0;
      return el("tr", { "data-version": v.version }, [
        el("td", {}, [el("a", { href: model.links.versions[v.version], target: "_blank", rel: "noopener", text: "v" + v.version })]),
        el("td", {}, (v.aliases || []).map(badge)),
        el("td", {}, Object.keys(metrics).sort().map(function (k) {
          return el("div", { text: k + " " + Number(metrics[k]).toFixed(4) });
        })),
        el("td", {}, lineage(v)),
        el("td", { class: "muted", text: v.created ? new Date(v.created).toISOString().replace("T", " ").slice(0, 19) : "" }),
        el("td", {}, [isChampion ? null : el("button", {
          class: "action promote", "data-version": v.version, disabled: !model.can_change,
          title: model.can_change ? "Make v" + v.version + " the champion with all the traffic" : model.refusal,
          onclick: function (event) {
            event.target.disabled = true;
            act(model, "promote", { version: v.version, reason: reasonOf() }, function () { event.target.disabled = false; });
          },
        }, ["Promote"])]),
      ]);
    });
    return el("div", { class: "card" }, [el("h3", { text: "Versions" }), el("table", { id: "versions" }, [
      el("tr", {}, ["version", "aliases", "test metrics", "lineage", "registered", ""].map(function (h) {
        return el("th", { text: h });
      })),
    ].concat(rows))]);
  }

  function historyCard(model) {
    var rows = (model.history || []).map(function (e) {
      var d = e.details || {};
      var from = d.from ? JSON.stringify(d.from.aliases) + " " + traffic(d.from.traffic) : "";
      var to = d.to ? JSON.stringify(d.to.aliases) + " " + traffic(d.to.traffic) : JSON.stringify(d);
      // Any recorded state can be restored in one step, as `mlwp models rollback --to <id>`.
      var back = d.to && e.id !== null && e.id !== undefined ? el("button", {
        class: "action secondary rollback-to", "data-event": String(e.id), disabled: !model.can_change,
        title: model.can_change ? "Restore the aliases and traffic right after this change" : model.refusal,
        onclick: function (event) {
          event.target.disabled = true;
          act(model, "rollback", { to: String(e.id), reason: reasonOf() }, function () { event.target.disabled = false; });
        },
      }, ["Back to this"]) : null;
      return el("tr", { "data-event": e.id === undefined ? null : String(e.id) }, [
        el("td", { class: "muted", text: e.id === null || e.id === undefined ? "" : String(e.id) }),
        el("td", { text: e.timestamp.replace("T", " ").slice(0, 19) }), el("td", { text: e.actor }),
        el("td", { text: e.action + (d.kind ? " (" + d.kind + ")" : "") }), el("td", { text: from }),
        el("td", { text: to }), el("td", { text: d.reason || "" }), el("td", {}, [back])]);
    });
    return el("div", { class: "card" }, [el("h3", { text: "Alias and traffic history" }),
      rows.length ? el("table", { id: "history" }, [el("tr", {}, ["#", "when (UTC)", "who", "what", "from", "to", "reason", ""].map(function (h) {
        return el("th", { text: h });
      }))].concat(rows)) : el("p", { class: "muted", text: "No change recorded yet." })]);
  }

  function number(value, digits) {
    return value === undefined || value === null ? "" : Number(value).toFixed(digits === undefined ? 3 : digits);
  }

  // The newest monitor look (mlwp.monitoring): traffic, labels, metrics with their confidence
  // intervals per variant, sample-ratio mismatch, the challenger decision and drift.
  function monitoringCard(model) {
    var m = model.monitoring;
    var title = el("h3", { text: "Monitoring and experiment" });
    if (!m) {
      return el("div", { class: "card" }, [title, el("p", { class: "muted", id: "monitoring",
        text: "No monitor run yet: a workflow with a monitor task reports here (docs/monitoring.md)." })]);
    }
    if (m.error) return el("div", { class: "card" }, [title, el("p", { class: "bad", id: "monitoring", text: m.error })]);
    var metrics = m.metrics || {};
    var versions = m.versions || {};
    var decisionClass = m.decision === "challenger_better" ? "ok" : m.decision === "challenger_worse" ? "bad" : "muted";
    var when = m.time ? new Date(m.time).toISOString().replace("T", " ").slice(0, 19) + " UTC" : "latest run";
    var variants = ["champion", "challenger", "shadow"].filter(function (v) {
      return versions[v] || metrics["traffic." + v + ".requests"] !== undefined;
    });
    var rows = variants.map(function (v) {
      var names = Object.keys(metrics).filter(function (k) {
        return k.indexOf(v + ".") === 0 && !/\.(low|high)$/.test(k);
      }).sort();
      return el("tr", { "data-variant": v }, [
        el("td", {}, [badge(v), versions[v] ? "v" + versions[v] : ""]),
        el("td", { text: number(metrics["traffic." + v + ".requests"], 0) }),
        el("td", { text: metrics["traffic." + v + ".share"] === undefined ? "" : number(100 * metrics["traffic." + v + ".share"], 1) + "%" }),
        el("td", { text: metrics["labels." + v + ".coverage"] === undefined ? "" : number(100 * metrics["labels." + v + ".coverage"], 1) + "%" }),
        el("td", { class: "metrics" }, names.map(function (k) {
          var low = metrics[k + ".low"], high = metrics[k + ".high"];
          return el("div", { text: k.slice(v.length + 1) + " " + number(metrics[k]) +
            (low !== undefined && high !== undefined ? " [" + number(low) + ", " + number(high) + "]" : "") });
        })),
      ]);
    });
    var facts = [];
    if (metrics["srm.p_value"] !== undefined) {
      facts.push(el("li", { id: "srm", class: metrics["srm.mismatch"] ? "bad" : null, text: "traffic split " +
        (metrics["srm.mismatch"] ? "MISMATCH" : "as configured") + " (SRM p = " + number(metrics["srm.p_value"], 4) + ")" }));
    }
    if (metrics["comparison.difference"] !== undefined || metrics["comparison.p_value"] !== undefined) {
      facts.push(el("li", { id: "comparison", text: "challenger - champion: " + number(metrics["comparison.difference"], 4) +
        (metrics["comparison.p_value"] !== undefined ? ", always-valid p = " + number(metrics["comparison.p_value"], 4) : "") }));
    }
    if (metrics["drift.share"] !== undefined) {
      facts.push(el("li", { id: "drift", class: metrics["drift.drifted"] ? "bad" : null, text: "drift: " +
        number(100 * metrics["drift.share"], 1) + "% of columns" + (metrics["drift.drifted"] ? " (drifted)" : "") }));
    }
    return el("div", { class: "card" }, [title,
      el("p", { id: "monitoring" }, [el("a", { href: m.url, target: "_blank", rel: "noopener", text: when }),
        " · decision: ", el("strong", { id: "decision", class: decisionClass, text: m.decision || "none" })]),
      el("table", { id: "monitoring-variants" }, [el("tr", {}, ["variant", "requests", "share", "labelled", "metrics [CI]"].map(function (h) {
        return el("th", { text: h });
      }))].concat(rows)),
      facts.length ? el("ul", { class: "facts" }, facts) : null]);
  }

  function loadDetail(name) {
    return request("GET", "/models/" + encodeURIComponent(name)).then(function (model) {
      if (current !== name) return;
      var detail = document.getElementById("detail");
      detail.replaceChildren(
        el("div", { class: "card" }, [
          el("h2", { id: "model-name", text: model.name }),
          el("dl", {}, [
            el("dt", { text: "project" }), el("dd", { text: model.project || "(none)" }),
            el("dt", { text: "aliases" }), el("dd", { id: "aliases" }, Object.keys(model.aliases).sort().map(function (a) {
              return el("span", {}, [badge(a), "v" + model.aliases[a] + " "]);
            })),
            el("dt", { text: "traffic" }), el("dd", {}, [el("span", { id: "traffic", text: traffic(model.traffic) }), bar(model.traffic)]),
            el("dt", { text: "MLflow" }), el("dd", {}, [el("a", { href: model.links.mlflow + "/#/models/" + encodeURIComponent(model.name),
              target: "_blank", rel: "noopener", text: "registered model" })]),
          ]),
        ]),
        servingCard(model), monitoringCard(model), actionsCard(model), versionsCard(model), historyCard(model));
    }).catch(function (error) { show("error", error.message); });
  }

  loadList();
})();
