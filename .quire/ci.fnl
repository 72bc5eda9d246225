;; Quire's own pipeline: what every push to this repository must pass.
(local ci (require :quire.ci))

(ci.job :fmt [:quire/push]
  (fn [{: sh}]
    (sh ["cargo" "fmt" "--all" "--check"])))

(ci.job :clippy [:quire/push]
  (fn [{: sh}]
    (sh ["cargo" "clippy" "--workspace" "--all-targets" "--" "-D" "warnings"])))

(ci.job :test [:fmt :clippy]
  (fn [{: sh}]
    (sh ["cargo" "nextest" "run" "--workspace"])))
