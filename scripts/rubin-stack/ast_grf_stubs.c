/*
 * Null 2-D graphics ("grf") functions for the Starlink AST library.
 *
 * Debian's libstarlink-ast ships the AST library with the 3-D grf module
 * (libstarlink_ast_grf3d) and the error module (libstarlink_ast_err), but not
 * the null 2-D grf modules (grf_2.0, grf_3.2, grf_5.6) that AST's own
 * `ast_link` would add. Without them libstarlink_ast.so has unresolved
 * symbols and Python, which loads extensions with RTLD_NOW, refuses to load
 * astshim. astshim and afw never plot through AST, so these functions only
 * report "no graphics available" (return 0, which AST treats as failure),
 * like AST's own null modules do.
 *
 * Part of meas_madness's scripts/build-rubin-stack.sh; not AST code.
 */

int astGFlush(void) { return 0; }
int astGLine(int n, const float *x, const float *y) { (void)n; (void)x; (void)y; return 0; }
int astGQch(float *chv, float *chh) { (void)chv; (void)chh; return 0; }
int astGMark(int n, const float *x, const float *y, int type) {
    (void)n; (void)x; (void)y; (void)type; return 0;
}
int astGText(const char *text, float x, float y, const char *just, float upx, float upy) {
    (void)text; (void)x; (void)y; (void)just; (void)upx; (void)upy; return 0;
}
int astGTxExt(const char *text, float x, float y, const char *just, float upx, float upy,
              float *xb, float *yb) {
    (void)text; (void)x; (void)y; (void)just; (void)upx; (void)upy; (void)xb; (void)yb;
    return 0;
}
int astGAttr(int attr, double value, double *old_value, int prim) {
    (void)attr; (void)value; (void)old_value; (void)prim; return 0;
}
int astGBBuf(void) { return 0; }
int astGEBuf(void) { return 0; }
int astGScales(float *alpha, float *beta) { (void)alpha; (void)beta; return 0; }
int astGCap(int cap, int value) { (void)cap; (void)value; return 0; }
