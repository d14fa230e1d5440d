# Ozone in New York, May to September 1973 (R's built-in airquality data).
# A linear model of ozone on solar radiation, wind and temperature; lm() drops the rows
# with a missing value, as R does by default.
fit <- lm(Ozone ~ Solar.R + Wind + Temp, data = airquality)
co <- coef(fit)
cat(sprintf("rows_used %d\n", nobs(fit)))
cat(sprintf("coef.intercept %.4f\n", co[["(Intercept)"]]))
cat(sprintf("coef.solar_r %.4f\n", co[["Solar.R"]]))
cat(sprintf("coef.wind %.4f\n", co[["Wind"]]))
cat(sprintf("coef.temp %.4f\n", co[["Temp"]]))
cat(sprintf("r_squared %.4f\n", summary(fit)$r.squared))
