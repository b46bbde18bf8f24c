/*
 * train_log.c - the log of `dsc train`: one row per optimizer step, kept in
 * memory for the whole run and written next to every checkpoint as
 *
 *   train_log.csv   the rows as text (format below), one per step 1..k of
 *                   the step-k checkpoint
 *   loss.svg        a line plot of the losses against the step, drawn here
 *                   (no plotting library): the raw next-token loss, its
 *                   moving average, the MTP loss, the validation loss
 *
 * CSV format (a header line, then one row per step, in step order):
 *
 *   step,loss,lm,mtp,balance,lr,grad_norm,tokens_per_s,elapsed_s,val_loss,val_mtp,
 *   idx_kl,idx_recall
 *
 * loss is the optimised total (lm + balance + mtp_weight x mtp); lm the
 * next-token cross-entropy; mtp the MTP cross-entropy (unweighted); balance
 * the sequence-wise balance term (alpha included); elapsed_s the training
 * wall time since step 0, summed over resumed runs. val_loss / val_mtp are
 * filled on the steps where the validation loss was measured. idx_kl and
 * idx_recall (deepseek_v32 models) are the DSA indexer's KL loss
 * (unweighted) and the recall of its top-k against the true attention's,
 * each a mean over the layers. A field that
 * does not apply (mtp without MTP, balance with --balance-alpha 0, the val
 * columns off evaluation steps, the idx columns without DSA) is empty.
 *
 * What this is not: a general CSV reader. It reads back what it wrote (by
 * the header's column names, so a column added later does not break older
 * files) and stops at the first line it does not understand.
 */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"

static const char *const COLS[] = {"step", "loss", "lm", "mtp", "balance", "lr", "grad_norm",
                                   "tokens_per_s", "elapsed_s", "val_loss", "val_mtp",
                                   "idx_kl", "idx_recall"};
#define N_COLS ((int)(sizeof COLS / sizeof COLS[0]))

/* Field i of a row (0 = step). */
static double *row_field(cli_log_row *r, int i) {
    double *f[N_COLS] = {NULL, &r->loss, &r->lm, &r->mtp, &r->balance, &r->lr, &r->grad_norm,
                         &r->tok_s, &r->elapsed_s, &r->val_loss, &r->val_mtp,
                         &r->idx_kl, &r->idx_recall};
    return f[i];
}

/* printf format of each column; each reads back to the same text. */
static const char *const FMT[N_COLS] = {"%lld", "%.6f", "%.6f", "%.6f", "%.6g", "%.6e",
                                        "%.6g", "%.1f", "%.3f", "%.6f", "%.6f",
                                        "%.6f", "%.6f"};

void cli_log_free(cli_train_log *l) {
    free(l->rows);
    l->rows = NULL;
    l->n = l->cap = 0;
}

int cli_log_add(cli_train_log *l, const cli_log_row *r) {
    while (l->n > 0 && l->rows[l->n - 1].step >= r->step) l->n--;   /* a step re-run */
    if (l->n == l->cap) {
        int64_t cap = l->cap ? 2 * l->cap : 1024;
        cli_log_row *p = realloc(l->rows, (size_t)cap * sizeof *p);
        if (!p) return -1;
        l->rows = p;
        l->cap = cap;
    }
    l->rows[l->n++] = *r;
    return 0;
}

/* Split line (NUL-terminated, modified in place) at commas into f[0..max). */
static int split(char *line, char **f, int max) {
    int n = 0;
    for (char *p = line;; p++) {
        if (n < max) f[n] = p;
        n++;
        p = strchr(p, ',');
        if (!p) break;
        *p = '\0';
    }
    return n;
}

int cli_log_read_csv(cli_train_log *l, const char *path, int64_t max_step, char *msg,
                     size_t cap) {
    l->n = 0;
    msg[0] = '\0';
    FILE *f = fopen(path, "rb");
    if (!f) {
        if (errno == ENOENT) return 1;
        snprintf(msg, cap, "%s: %s", path, strerror(errno));
        return -1;
    }
    char line[4096], *fld[64];
    int col_of[N_COLS], ok = 0;   /* col_of[i]: the file's column of field i */
    long long lineno = 1;
    if (fgets(line, sizeof line, f)) {
        line[strcspn(line, "\r\n")] = '\0';
        int nf = split(line, fld, 64);
        for (int i = 0; i < N_COLS; i++) {
            col_of[i] = -1;
            for (int j = 0; j < nf && j < 64; j++)
                if (!strcmp(fld[j], COLS[i])) col_of[i] = j;
        }
        ok = col_of[0] == 0;
    }
    if (!ok) {
        snprintf(msg, cap, "%s: no header line starting with \"step,\"", path);
        fclose(f);
        return -1;
    }
    int rc = 0;
    while (fgets(line, sizeof line, f)) {
        lineno++;
        if (!strchr(line, '\n') && !feof(f)) {
            snprintf(msg, cap, "%s:%lld: line too long", path, lineno);
            rc = -1;
            break;
        }
        line[strcspn(line, "\r\n")] = '\0';
        if (!line[0]) continue;
        int nf = split(line, fld, 64);
        cli_log_row r;
        char *end;
        errno = 0;
        r.step = strtoll(fld[0], &end, 10);
        int bad = errno || end == fld[0] || *end || r.step < 1 ||
                  (l->n > 0 && r.step <= l->rows[l->n - 1].step);
        for (int i = 1; i < N_COLS && !bad; i++) {
            double *v = row_field(&r, i);
            *v = NAN;
            int c = col_of[i];
            if (c < 0 || c >= nf || c >= 64 || !fld[c][0]) continue;
            *v = strtod(fld[c], &end);
            bad = end == fld[c] || *end;
        }
        if (bad) {
            snprintf(msg, cap, "%s:%lld: not a row of step,loss,... in increasing step order",
                     path, lineno);
            rc = -1;
            break;
        }
        if (r.step > max_step) break;   /* steps after the checkpoint: not part of it */
        if (cli_log_add(l, &r) != 0) {
            snprintf(msg, cap, "%s: out of memory", path);
            rc = -1;
            break;
        }
    }
    if (ferror(f) && rc == 0) {
        snprintf(msg, cap, "%s: read error", path);
        rc = -1;
    }
    fclose(f);
    return rc;
}

int cli_log_write_csv(const cli_train_log *l, const char *path, int64_t max_step) {
    FILE *f = fopen(path, "wb");
    if (!f) return -1;
    for (int i = 0; i < N_COLS; i++) fprintf(f, "%s%s", i ? "," : "", COLS[i]);
    fputc('\n', f);
    for (int64_t k = 0; k < l->n && l->rows[k].step <= max_step; k++) {
        cli_log_row r = l->rows[k];
        fprintf(f, "%lld", (long long)r.step);
        for (int i = 1; i < N_COLS; i++) {
            double v = *row_field(&r, i);
            fputc(',', f);
            if (isfinite(v)) fprintf(f, FMT[i], v);
            else if (!isnan(v)) fprintf(f, "%s", v > 0 ? "inf" : "-inf");
        }
        fputc('\n', f);
    }
    int bad = ferror(f);
    if (fclose(f) != 0) bad = 1;
    return bad ? -1 : 0;
}

/* ---- loss.svg ---- */

#define SVG_W 900
#define SVG_H 520
#define PX0 78           /* plot area: left, right, top, bottom */
#define PX1 (SVG_W - 24)
#define PY0 62
#define PY1 (SVG_H - 58)
#define MAX_POINTS 1500  /* most points per polyline (long runs are strided) */

/* A "nice" tick spacing (1, 2 or 5 x 10^k) giving about `want` ticks. */
static double nice_step(double span, int want) {
    double raw = span / want, p = pow(10, floor(log10(raw))), m = raw / p;
    return (m < 1.5 ? 1 : m < 3.5 ? 2 : m < 7.5 ? 5 : 10) * p;
}

/* Text with XML's special characters escaped (control bytes dropped). */
static void put_text(FILE *f, const char *s) {
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        if (c == '&') fputs("&amp;", f);
        else if (c == '<') fputs("&lt;", f);
        else if (c == '>') fputs("&gt;", f);
        else if (c == '"') fputs("&quot;", f);
        else if (c >= 0x20) fputc(c, f);
    }
}

typedef struct {
    double xmin, xmax, ymin, ymax;
} svg_scale;

static double sx(const svg_scale *s, double x) {
    return PX0 + (x - s->xmin) / (s->xmax - s->xmin) * (PX1 - PX0);
}
static double sy(const svg_scale *s, double y) {
    return PY1 - (y - s->ymin) / (s->ymax - s->ymin) * (PY1 - PY0);
}

/* One polyline through the finite (step, v[k]) of the first n rows, every
   stride-th point (and the last). */
static void polyline(FILE *f, const svg_scale *s, const cli_log_row *rows, const double *v,
                     int64_t n, int64_t stride, const char *style) {
    int64_t shown = 0;
    for (int64_t k = 0; k < n; k++) {
        if (!isfinite(v[k]) || (k % stride && k != n - 1)) continue;
        if (!shown++) fprintf(f, "<polyline %s points=\"", style);
        fprintf(f, "%.1f,%.1f ", sx(s, (double)rows[k].step), sy(s, v[k]));
    }
    if (shown) fputs("\"/>\n", f);
}

/* Centered moving average of the finite values of x[0, n): over rows
   k-w..k+w with w = min(h, k, n-1-k), so that the window stays centered
   (and shrinks) at both ends. out[k] is NAN where x[k] is not finite, and
   out must not be x. Returns -1 when out of memory. */
static int smooth(const double *x, int64_t n, int64_t h, double *out) {
    double *sum = malloc((size_t)(n + 1) * sizeof *sum);
    int64_t *cnt = malloc((size_t)(n + 1) * sizeof *cnt);
    if (!sum || !cnt) {
        free(sum);
        free(cnt);
        return -1;
    }
    sum[0] = 0;
    cnt[0] = 0;
    for (int64_t k = 0; k < n; k++) {   /* prefix sums over the finite values */
        int ok = isfinite(x[k]);
        sum[k + 1] = sum[k] + (ok ? x[k] : 0);
        cnt[k + 1] = cnt[k] + ok;
    }
    for (int64_t k = 0; k < n; k++) {
        int64_t w = h < k ? h : k;
        if (n - 1 - k < w) w = n - 1 - k;
        int64_t c = cnt[k + w + 1] - cnt[k - w];
        out[k] = isfinite(x[k]) && c ? (sum[k + w + 1] - sum[k - w]) / (double)c : NAN;
    }
    free(sum);
    free(cnt);
    return 0;
}

int cli_log_write_svg(const cli_train_log *l, const char *path, int64_t max_step,
                      const char *title) {
    int64_t n = 0;
    while (n < l->n && l->rows[n].step <= max_step) n++;
    const cli_log_row *rows = l->rows;
    double *lm = calloc((size_t)(n ? n : 1) * 4, sizeof *lm);
    if (!lm) return -1;
    double *avg = lm + n, *mtp = avg + n, *val = mtp + n;
    int has_mtp = 0, has_val = 0;
    for (int64_t k = 0; k < n; k++) {
        lm[k] = rows[k].lm;
        mtp[k] = rows[k].mtp;
        val[k] = rows[k].val_loss;
        has_mtp |= isfinite(mtp[k]);
        has_val |= isfinite(val[k]);
    }
    int64_t h = n / 100;   /* window: 2% of the run, centered */
    double *tmp = malloc((size_t)(n ? n : 1) * sizeof *tmp);
    if (!tmp || smooth(lm, n, h, avg) != 0 || smooth(mtp, n, h, tmp) != 0) {
        free(tmp);
        free(lm);
        errno = ENOMEM;
        return -1;
    }
    memcpy(mtp, tmp, (size_t)n * sizeof *tmp);
    free(tmp);

    /* ranges: steps 0..last; losses over every plotted value, 4% margins */
    svg_scale s = {0, n ? (double)rows[n - 1].step : 1, INFINITY, -INFINITY};
    if (s.xmax <= s.xmin) s.xmax = s.xmin + 1;
    const double *all[4] = {lm, avg, mtp, val};
    for (int i = 0; i < 4; i++)
        for (int64_t k = 0; k < n; k++)
            if (isfinite(all[i][k])) {
                if (all[i][k] < s.ymin) s.ymin = all[i][k];
                if (all[i][k] > s.ymax) s.ymax = all[i][k];
            }
    if (!(s.ymin <= s.ymax)) s.ymin = 0, s.ymax = 1;
    if (s.ymax - s.ymin < 1e-6) s.ymin -= 0.5, s.ymax += 0.5;
    double pad = 0.04 * (s.ymax - s.ymin);
    s.ymin -= pad;
    s.ymax += pad;
    int64_t stride = n > MAX_POINTS ? (n + MAX_POINTS - 1) / MAX_POINTS : 1;

    FILE *f = fopen(path, "wb");
    if (!f) {
        free(lm);
        return -1;
    }
    fprintf(f, "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n"
            "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"%d\" height=\"%d\" "
            "viewBox=\"0 0 %d %d\" font-family=\"DejaVu Sans, Helvetica, Arial, sans-serif\" "
            "font-size=\"12\">\n", SVG_W, SVG_H, SVG_W, SVG_H);
    fprintf(f, "<rect width=\"%d\" height=\"%d\" fill=\"white\"/>\n", SVG_W, SVG_H);
    fputs("<text x=\"450\" y=\"24\" text-anchor=\"middle\" font-size=\"15\" "
          "font-weight=\"bold\">", f);
    put_text(f, title ? title : "dsc train");
    fputs("</text>\n", f);
    if (n)
        fprintf(f, "<text x=\"450\" y=\"44\" text-anchor=\"middle\" fill=\"#555\">steps 1..%lld"
                "%s</text>\n", (long long)rows[n - 1].step,
                h ? ", moving averages over a centered window of 2% of the steps" : "");

    /* grid, ticks and their labels */
    double ys = nice_step(s.ymax - s.ymin, 6), xs = nice_step(s.xmax - s.xmin, 8);
    if (xs < 1) xs = 1;
    int dec = ys >= 1 ? 0 : (int)ceil(-log10(ys) - 1e-9);
    fputs("<g stroke=\"#e3e3e3\" stroke-width=\"1\">\n", f);
    for (double y = ceil(s.ymin / ys) * ys; y <= s.ymax; y += ys)
        fprintf(f, "<line x1=\"%d\" y1=\"%.1f\" x2=\"%d\" y2=\"%.1f\"/>\n", PX0, sy(&s, y), PX1,
                sy(&s, y));
    for (double x = ceil(s.xmin / xs) * xs; x <= s.xmax; x += xs)
        fprintf(f, "<line x1=\"%.1f\" y1=\"%d\" x2=\"%.1f\" y2=\"%d\"/>\n", sx(&s, x), PY0,
                sx(&s, x), PY1);
    fputs("</g>\n<g fill=\"#333\">\n", f);
    for (double y = ceil(s.ymin / ys) * ys; y <= s.ymax; y += ys)
        fprintf(f, "<text x=\"%d\" y=\"%.1f\" text-anchor=\"end\">%.*f</text>\n", PX0 - 8,
                sy(&s, y) + 4, dec, fabs(y) < ys / 2 ? 0.0 : y);
    for (double x = ceil(s.xmin / xs) * xs; x <= s.xmax; x += xs)
        fprintf(f, "<text x=\"%.1f\" y=\"%d\" text-anchor=\"middle\">%.0f</text>\n", sx(&s, x),
                PY1 + 18, x);
    fprintf(f, "<text x=\"%d\" y=\"%d\" text-anchor=\"middle\" font-size=\"13\">step</text>\n",
            (PX0 + PX1) / 2, SVG_H - 14);
    fprintf(f, "<text x=\"20\" y=\"%d\" text-anchor=\"middle\" font-size=\"13\" "
            "transform=\"rotate(-90 20 %d)\">loss (cross-entropy, nats/token)</text>\n",
            (PY0 + PY1) / 2, (PY0 + PY1) / 2);
    fputs("</g>\n", f);
    fprintf(f, "<rect x=\"%d\" y=\"%d\" width=\"%d\" height=\"%d\" fill=\"none\" "
            "stroke=\"#888\"/>\n", PX0, PY0, PX1 - PX0, PY1 - PY0);

    /* the curves */
    fputs("<g fill=\"none\" stroke-linejoin=\"round\">\n", f);
    polyline(f, &s, rows, lm, n, stride, "stroke=\"#aecbe6\" stroke-width=\"1\"");
    if (has_mtp) polyline(f, &s, rows, mtp, n, stride, "stroke=\"#ff7f0e\" stroke-width=\"1.5\"");
    polyline(f, &s, rows, avg, n, stride, "stroke=\"#1f5fa8\" stroke-width=\"2\"");
    if (has_val) polyline(f, &s, rows, val, n, 1, "stroke=\"#d62728\" stroke-width=\"1.5\"");
    fputs("</g>\n", f);
    if (has_val) {
        fputs("<g fill=\"#d62728\">\n", f);
        for (int64_t k = 0; k < n; k++)
            if (isfinite(val[k]))
                fprintf(f, "<circle cx=\"%.1f\" cy=\"%.1f\" r=\"3\"/>\n",
                        sx(&s, (double)rows[k].step), sy(&s, val[k]));
        fputs("</g>\n", f);
    }

    /* legend, top right inside the plot */
    const char *names[4] = {"train loss (next token)", "train loss, moving average",
                            "MTP loss, moving average", "validation loss"};
    const char *colors[4] = {"#aecbe6", "#1f5fa8", "#ff7f0e", "#d62728"};
    int show[4] = {1, 1, has_mtp, has_val}, rows_shown = 0;
    for (int i = 0; i < 4; i++) rows_shown += show[i];
    int lx = PX1 - 232, ly = PY0 + 10;
    fprintf(f, "<rect x=\"%d\" y=\"%d\" width=\"222\" height=\"%d\" fill=\"white\" "
            "fill-opacity=\"0.9\" stroke=\"#bbb\"/>\n", lx, ly, 10 + 18 * rows_shown);
    for (int i = 0, r = 0; i < 4; i++) {
        if (!show[i]) continue;
        int y = ly + 14 + 18 * r++;
        fprintf(f, "<line x1=\"%d\" y1=\"%d\" x2=\"%d\" y2=\"%d\" stroke=\"%s\" "
                "stroke-width=\"%s\"/>\n", lx + 8, y, lx + 34, y, colors[i], i == 1 ? "2" : "1.5");
        if (i == 3)
            fprintf(f, "<circle cx=\"%d\" cy=\"%d\" r=\"3\" fill=\"%s\"/>\n", lx + 21, y,
                    colors[i]);
        fprintf(f, "<text x=\"%d\" y=\"%d\">%s</text>\n", lx + 42, y + 4, names[i]);
    }
    fputs("</svg>\n", f);
    free(lm);
    int bad = ferror(f);
    if (fclose(f) != 0) bad = 1;
    return bad ? -1 : 0;
}
