#!/bin/sh
# plot-curves.sh OUT.svg TITLE "NAME ..." train_log.csv ... : one SVG with, for each
# run, its training LM loss (mean of 50-step windows, thin) and its
# validation loss (points joined, thick) against the step, so that runs of
# the same schedule can be compared at a glance. Reads dsc train's CSV
# (columns by header name: step, lm, val_loss); POSIX sh + awk only.
set -eu
out=$1; title=$2; names=$3; shift 3
awk -F, -v title="$title" -v names="$names" '
BEGIN { W = 900; H = 480; L = 70; R = 190; T = 40; B = 50
        split("#1f77b4 #d62728 #2ca02c #9467bd #ff7f0e", col, " ")
        split(names, name, " "); n = 0; xmax = 0; ymin = 1e30; ymax = -1e30 }
FNR == 1 {
    n++
    for (i = 1; i <= NF; i++) c[$i] = i
    cs = c["step"]; cl = c["lm"]; cv = c["val_loss"]; acc = 0; k = 0; nt[n] = 0; nv[n] = 0
    next
}
{
    s = $cs + 0; if (s > xmax) xmax = s
    if ($cl != "") { acc += $cl; k++ }
    if (k == 50) { m = acc / k; nt[n]++; tx[n, nt[n]] = s; ty[n, nt[n]] = m; acc = 0; k = 0; lim(m) }
    if ($cv != "") { v = $cv + 0; nv[n]++; vx[n, nv[n]] = s; vy[n, nv[n]] = v; lim(v) }
}
function lim(y) { if (y < ymin) ymin = y; if (y > ymax) ymax = y }
function X(s) { return L + (W - L - R) * s / (xmax > 0 ? xmax : 1) }
function Y(y) { return T + (H - T - B) * (ymax - y) / (ymax > ymin ? ymax - ymin : 1) }
END {
    ymin = int(ymin * 2) / 2; ymax = int(ymax * 2 + 1) / 2
    printf "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"%d\" height=\"%d\" font-family=\"sans-serif\" font-size=\"12\">\n", W, H
    printf "<rect width=\"%d\" height=\"%d\" fill=\"white\"/>\n", W, H
    printf "<text x=\"%d\" y=\"22\" font-size=\"15\">%s</text>\n", L, title
    for (y = ymin; y <= ymax + 1e-9; y += 0.5) {
        printf "<line x1=\"%d\" x2=\"%d\" y1=\"%.1f\" y2=\"%.1f\" stroke=\"#ddd\"/>", L, W - R, Y(y), Y(y)
        printf "<text x=\"%d\" y=\"%.1f\" text-anchor=\"end\">%.1f</text>\n", L - 6, Y(y) + 4, y
    }
    step = 10 ^ int(log(xmax > 10 ? xmax : 10) / log(10)); if (xmax / step < 4) step /= 2
    for (s = 0; s <= xmax; s += step) {
        printf "<line x1=\"%.1f\" x2=\"%.1f\" y1=\"%d\" y2=\"%d\" stroke=\"#ddd\"/>", X(s), X(s), T, H - B
        printf "<text x=\"%.1f\" y=\"%d\" text-anchor=\"middle\">%d</text>\n", X(s), H - B + 16, s
    }
    printf "<text x=\"%d\" y=\"%d\" text-anchor=\"middle\">step</text>\n", (L + W - R) / 2, H - 10
    printf "<text x=\"16\" y=\"%d\" transform=\"rotate(-90 16 %d)\" text-anchor=\"middle\">loss (nats)</text>\n", (T + H - B) / 2, (T + H - B) / 2
    for (r = 1; r <= n; r++) {
        printf "<polyline fill=\"none\" stroke=\"%s\" stroke-opacity=\"0.45\" stroke-width=\"1\" points=\"", col[r]
        for (i = 1; i <= nt[r]; i++) printf "%.1f,%.1f ", X(tx[r, i]), Y(ty[r, i])
        printf "\"/>\n<polyline fill=\"none\" stroke=\"%s\" stroke-width=\"2.5\" points=\"", col[r]
        for (i = 1; i <= nv[r]; i++) printf "%.1f,%.1f ", X(vx[r, i]), Y(vy[r, i])
        printf "\"/>\n"
        for (i = 1; i <= nv[r]; i++) printf "<circle cx=\"%.1f\" cy=\"%.1f\" r=\"3\" fill=\"%s\"/>", X(vx[r, i]), Y(vy[r, i]), col[r]
        printf "\n<text x=\"%d\" y=\"%d\" fill=\"%s\">%s</text>\n", W - R + 12, T + 18 * r, col[r], name[r]
    }
    printf "<text x=\"%d\" y=\"%d\" fill=\"#555\">thin: train (50-step mean)</text>\n", W - R + 12, T + 18 * (n + 1)
    printf "<text x=\"%d\" y=\"%d\" fill=\"#555\">thick: validation</text>\n", W - R + 12, T + 18 * (n + 2)
    print "</svg>"
}' "$@" > "$out"
