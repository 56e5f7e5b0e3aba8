// tap_gen.v -- the engine's address generator: one tap a cycle of the layer that the sequencer
// loaded, in the order  group g > output row oy > output column ox > input channel ci > ky > kx.
// A group is up to P output channels (one a MAC lane) that share every input byte, a max pool's one
// channel; its input plane steps by gstep_in, its weights by wstep words.  Linear layers arrive as a
// conv whose kernel is its whole input.
// Coordinates and offsets are kept incrementally (adders only: the DSPs belong to the MAC lanes):
// iy = oy*SH + ky*DH - PT, ix = ox*SW + kx*DW - PL, roff = iy*W, plane = in_base + g*GSTEP_IN + ci*HW.
// A tap outside the input is padding (pad=1): it holds the input's zero point, so it adds nothing.
// *_last: a count less 1, as the exporter writes it.
// hold: the top's request not to issue a group's last tap yet (its accumulators are still draining).
`timescale 1ns / 1ps
module tap_gen #(parameter AW = 16) (
    input  wire clk,
    input  wire rst,
    input  wire start,
    input  wire hold,
    input  wire [15:0] in_base, out_base, wbase, h, w, cing_last, kh_last, kw_last, sh, sw, dh, dw, pt, pl,
    input  wire [15:0] oh_last, ow_last, groups_last, hw, gstep_in, gstep_out, gch, wstep, row_start, sh_w, dh_w,
    output wire issue,
    output wire [AW-1:0] act_addr,
    output wire [15:0] w_addr,
    output wire pad, first, last,
    output wire [AW-1:0] tag_addr,
    output wire [15:0] tag_ch,
    output reg  busy
);
    reg [15:0] g, oy, ox, ci, ky, kx, pos, ch, plane_g, plane, wgrp, waddr, outg;
    reg signed [17:0] iy0, ix0, iy, ix, roff0, roff;

    wire signed [17:0] neg_pt = -$signed({2'b0, pt});
    wire signed [17:0] neg_pl = -$signed({2'b0, pl});
    wire signed [17:0] rstart = $signed({{2{row_start[15]}}, row_start});
    wire kx_end = kx == kw_last, ky_end = ky == kh_last, ci_end = ci == cing_last;
    wire ox_end = ox == ow_last, oy_end = oy == oh_last, g_end = g == groups_last;
    wire taps_end = kx_end && ky_end && ci_end;
    wire signed [17:0] full_addr = $signed({2'b0, plane}) + roff + ix;

    assign last = taps_end;
    assign first = kx == 16'd0 && ky == 16'd0 && ci == 16'd0;
    assign issue = busy && !(taps_end && hold);
    assign pad = iy < 0 || iy >= $signed({2'b0, h}) || ix < 0 || ix >= $signed({2'b0, w});
    assign act_addr = full_addr[AW-1:0];
    assign w_addr = waddr;
    assign tag_addr = outg[AW-1:0] + pos[AW-1:0];
    assign tag_ch = ch;

    always @(posedge clk) begin
        if (rst)
            busy <= 1'b0;
        else if (start) begin
            {g, oy, ox, ci, ky, kx, pos, ch} <= 128'd0;
            {iy0, iy} <= {neg_pt, neg_pt};
            {ix0, ix} <= {neg_pl, neg_pl};
            {roff0, roff} <= {rstart, rstart};
            {plane_g, plane} <= {in_base, in_base};
            {wgrp, waddr} <= {wbase, wbase};
            outg <= out_base;
            busy <= 1'b1;
        end else if (issue) begin
            waddr <= waddr + 16'd1;
            if (!kx_end) begin
                kx <= kx + 16'd1;
                ix <= ix + $signed({2'b0, dw});
            end else begin
                kx <= 16'd0;
                ix <= ix0;
                if (!ky_end) begin
                    ky <= ky + 16'd1;
                    iy <= iy + $signed({2'b0, dh});
                    roff <= roff + $signed({2'b0, dh_w});
                end else begin
                    ky <= 16'd0;
                    iy <= iy0;
                    roff <= roff0;
                    if (!ci_end) begin
                        ci <= ci + 16'd1;
                        plane <= plane + hw;
                    end else begin
                        ci <= 16'd0;
                        plane <= plane_g;
                        waddr <= wgrp;
                        next_position;
                    end
                end
            end
        end
    end

    // the taps of one output are done: the next column, row, or group
    task next_position;
        if (!ox_end) begin
            ox <= ox + 16'd1;
            ix0 <= ix0 + $signed({2'b0, sw});
            ix <= ix0 + $signed({2'b0, sw});
            pos <= pos + 16'd1;
        end else begin
            ox <= 16'd0;
            ix0 <= neg_pl;
            ix <= neg_pl;
            if (!oy_end) begin
                oy <= oy + 16'd1;
                iy0 <= iy0 + $signed({2'b0, sh});
                iy <= iy0 + $signed({2'b0, sh});
                roff0 <= roff0 + $signed({2'b0, sh_w});
                roff <= roff0 + $signed({2'b0, sh_w});
                pos <= pos + 16'd1;
            end else begin
                oy <= 16'd0;
                {iy0, iy} <= {neg_pt, neg_pt};
                {roff0, roff} <= {rstart, rstart};
                pos <= 16'd0;
                if (!g_end) begin
                    g <= g + 16'd1;
                    plane_g <= plane_g + gstep_in;
                    plane <= plane_g + gstep_in;
                    wgrp <= wgrp + wstep;
                    waddr <= wgrp + wstep;
                    outg <= outg + gstep_out;
                    ch <= ch + gch;
                end else
                    busy <= 1'b0;
            end
        end
    endtask
endmodule
