# Stopping distance against speed (the `cars` data set that ships with R).
fit <- lm(dist ~ speed, data = cars)
cat(sprintf("slope = %.4f\n", coef(fit)[["speed"]]))
cat(sprintf("intercept = %.4f\n", coef(fit)[["(Intercept)"]]))
cat(sprintf("r.squared = %.4f\n", summary(fit)$r.squared))
