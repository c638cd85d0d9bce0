// Follow the Airflow UI's light/dark theme. The Airflow UI (next-themes) puts "light" or
// "dark" on its <html> element (class or data-theme); this page is embedded in it from the same origin, so it reads
// that class and watches it. Opened on its own, it falls back to Airflow's stored choice
// ("theme" in localStorage) and then to the system preference.
(function () {
  function parentMode() {
    try {
      var root = window.parent !== window ? window.parent.document.documentElement : null;
      if (root && (root.classList.contains("dark") || root.dataset.theme === "dark")) return "dark";
      if (root && (root.classList.contains("light") || root.dataset.theme === "light")) return "light";
    } catch (e) { /* another origin: no access */ }
    return null;
  }
  function storedMode() {
    try {
      var value = window.localStorage.getItem("theme");
      if (value === "dark" || value === "light") return value;
    } catch (e) { /* storage disabled */ }
    return window.matchMedia && window.matchMedia("(prefers-color-scheme: dark)").matches
      ? "dark" : "light";
  }
  function apply() {
    var mode = parentMode() || storedMode();
    document.documentElement.dataset.theme = mode;
    document.documentElement.style.colorScheme = mode;
  }
  apply();
  try {
    if (window.parent !== window) {
      new MutationObserver(apply).observe(window.parent.document.documentElement, {
        attributes: true, attributeFilter: ["class", "style", "data-theme"],
      });
    }
  } catch (e) { /* another origin */ }
  window.addEventListener("storage", apply);
})();
